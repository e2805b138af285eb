#!/usr/bin/env python3
"""Which ELF sections of a running binary are resident in a process: reads /proc/PID/pagemap
for the binary's mappings and names the section each present page belongs to (a page holding
the end of one section and the start of the next counts for the first). Needs root.
    benches/resident-sections.py PID BINARY
With RESIDENT_RUNS=1 it also lists each run of resident pages, as an offset into its section:
taken before and after a change of load, the difference says which code or data mapped back.
Used by `PAIR_MEMORY_SECTIONS=1 benches/pair-memory.sh`."""
import os, struct, subprocess, sys

PAGE = 4096

def sections(binary):
    """(address, size, name) of the binary's allocated sections, by address."""
    out = subprocess.run(['readelf', '-SW', binary], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if not line.strip().startswith('[') or ']' not in line:
            continue
        parts = line.split(']', 1)[1].split()
        if len(parts) < 5 or not parts[0].startswith(('.', '_')):
            continue
        try:
            addr, size = int(parts[2], 16), int(parts[4], 16)
        except ValueError:
            continue
        if addr:
            found.append((addr, size, parts[0]))
    return sorted(found)

def section_of(page, secs):
    for addr, size, name in secs:
        if addr <= page < addr + size or page <= addr < page + PAGE:
            return name
    return '?'

def main():
    pid, binary = int(sys.argv[1]), os.path.realpath(sys.argv[2])
    secs = sections(binary)
    kb = {}
    present = []
    with open(f'/proc/{pid}/maps') as maps, open(f'/proc/{pid}/pagemap', 'rb') as pagemap:
        for line in maps:
            f = line.split()
            if len(f) < 6 or f[5] != binary:
                continue
            lo, hi = (int(x, 16) for x in f[0].split('-'))
            pagemap.seek(lo // PAGE * 8)
            entries = pagemap.read((hi - lo) // PAGE * 8)
            for i in range((hi - lo) // PAGE):
                (entry,) = struct.unpack_from('<Q', entries, i * 8)
                if entry >> 63:  # present
                    present.append(lo + i * PAGE)
                    name = section_of(lo + i * PAGE, secs)
                    kb[name] = kb.get(name, 0) + PAGE // 1024
    for name, n in sorted(kb.items(), key=lambda x: -x[1]):
        print(f'{name:25s} {n:6d} kB resident')
    if os.environ.get('RESIDENT_RUNS'):
        print_runs(present, secs)

def print_runs(present, secs):
    """The runs of resident pages, as offsets into the section where each run starts."""
    runs = []
    for page in present:
        if runs and runs[-1][1] == page:
            runs[-1][1] = page + PAGE
        else:
            runs.append([page, page + PAGE])
    for lo, hi in runs:
        name = section_of(lo, secs)
        base = next((a for a, _, n in secs if n == name), lo)
        print(f'   {name} +{(lo - base) // 1024} kB: {(hi - lo) // 1024} kB')

main()
