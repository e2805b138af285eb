#!/usr/bin/env python3
"""Writes a linker script that gathers the read-only data mesh-proxy reads into one output
section, placed before .rodata (see scripts/data-order.sh).
    data-order.py MAP TRACE... > proxy/data-order.ld
MAP: lld's -Map output of the traced binary. TRACE: files of hex addresses >> 8 (256-byte
blocks) that valgrind's lackey saw loaded. An input section is hot if it overlaps a loaded
block. Merged string and constant sections (.rodata.str*, .rodata.cst*) and plain `.rodata`
sections have names many objects share, so they cannot be picked out by name and stay put."""
import re, sys

# scripts/data-order.sh keeps the loads from 0x200000-0x3fffff (its grep filter).
TRACED_END = 0x400000

def input_sections(map_path):
    """(start, size, name) of every input section in the .rodata output sections."""
    # VMA LMA Size Align, then the name, indented 0 (output section), 8 (input section) or
    # 16 (symbol) spaces.
    line_re = re.compile(r'^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+ (\s*)(.*)$')
    out = None
    for line in open(map_path, errors='replace'):
        m = line_re.match(line.rstrip('\n'))
        if not m:
            continue
        addr, size, indent, rest = int(m.group(1), 16), int(m.group(2), 16), len(m.group(3)), m.group(4)
        if indent == 0:
            out = rest
        elif indent == 8 and out in ('.rodata', '.rodata.hot') and rest.endswith(')') and ':(' in rest:
            yield addr, size, rest[rest.rindex(':(') + 2:-1]

def main():
    map_path, traces = sys.argv[1], sys.argv[2:]
    blocks = set()
    for t in traces:
        blocks.update(int(l, 16) for l in open(t) if l.strip())
    rodata = sorted(input_sections(map_path))
    if not rodata or rodata[-1][0] + rodata[-1][1] > TRACED_END:
        sys.exit(f'data-order: .rodata in {map_path} is not below {TRACED_END:#x}, the end of the '
                 'range scripts/data-order.sh traces: widen its filter')
    hot, seen = [], set()
    for addr, size, name in rodata:
        if size == 0 or name == '.rodata' or name.startswith(('.rodata.str', '.rodata.cst')):
            continue
        if any(b in blocks for b in range(addr >> 8, ((addr + size - 1) >> 8) + 1)):
            if name not in seen:
                seen.add(name)
                hot.append((name, size))
    print('/* Written by scripts/data-order.sh: the read-only data mesh-proxy read while it ran,')
    print(f'   {len(hot)} input sections, {sum(s for _, s in hot)} bytes, gathered before .rodata so')
    print('   that the pages it reads sit together (proxy/build.rs passes this file to the linker). */')
    print('SECTIONS {')
    print('  .rodata.hot : {')
    for name, _ in hot:
        print(f'    *("{name}")')
    print('  }')
    print('} INSERT BEFORE .rodata;')

main()
