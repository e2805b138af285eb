"""Reading the callgrind files of benches/instructions.sh: its dumps (`callgrind_control
--dump=NAME` per load) and each function's own instructions in one of them. Shared by
instructions.sh and layers.py."""

import collections
import glob
import re
import subprocess


def dumps(cg, pid):
    """{NAME: (instructions, path)} of the dumps of process `pid` in directory `cg` (NAME is
    the dump's name, or `termination` for the count at exit)."""
    found = {}
    for path in glob.glob(f'{cg}/callgrind.{pid}.*'):
        desc, total = None, None
        with open(path, errors='replace') as f:
            for line in f:
                if line.startswith('desc: Trigger: '):
                    # "dump NAME" (callgrind_control --dump=NAME), or "Program termination"
                    desc = line.split()[-1]
                elif line.startswith('summary:') or line.startswith('totals:'):
                    total = int(line.split()[1])
        if desc:
            found[desc] = (total, path)
    return found


def pids(cg):
    """The processes with dumps in `cg`, in start order (by pid)."""
    return sorted({int(p.split('.')[-2]) for p in glob.glob(f'{cg}/callgrind.*.*')})


def functions(path):
    """Counter of each function's own instructions in one callgrind file, keyed by (source
    file, name); the source file without the registry's or the toolchain's prefix."""
    out = subprocess.run(['callgrind_annotate', '--auto=no', '--threshold=100', '--inclusive=no', path],
                         capture_output=True, text=True, check=True).stdout
    own = collections.Counter()
    for line in out.splitlines():
        m = re.match(r'^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(\S.*?)(\s+\[.*\])?$', line)
        # Not the program's total, nor the frames every other is under, which callgrind_annotate
        # lists with it (`main`, `Runtime::block_on`): no function's own share comes near it.
        if not m or float(m[2]) >= 99:
            continue
        file, _, symbol = m[3].partition(':')
        file = re.sub(r'^/root/\.cargo/registry/src/[^/]+/', '', file)
        file = re.sub(r'^/rustc/[0-9a-f]+/', '', file)
        own[(file, symbol)] += int(m[1].replace(',', ''))
    return own
