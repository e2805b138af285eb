#!/usr/bin/env python3
"""User-space instructions a request by layer, from two runs of benches/instructions.sh.

    layers.py DIR_A REQUESTS_A DIR_B REQUESTS_B

DIR_A and DIR_B are the callgrind directories the two runs name on their last line; each load's
count is taken as the difference between the runs over the difference of their requests, so
what each load costs once (its 50 new connections, their TLS handshakes in tcp mode) drops out.
Every function's own instructions go to the layer of the source file they were compiled from
(std's and core's inlined code to the crate of the function it was inlined into): the AEAD
(aws-lc), rustls, tokio's timer wheel and the clock reads (tokio's time driver and its runtime
metrics read the clock at every park), the rest of tokio, the mesh's own code, memcpy/memset,
malloc/free, and the other crates (httparse, http, bytes, futures, ...).
"""

import collections
import glob
import re
import subprocess
import sys

LAYERS = [
    'aws-lc (AES-GCM)',
    'rustls, tokio-rustls',
    'tokio timer, clock',
    'tokio (scheduler, I/O)',
    'mesh-proxy',
    'memcpy, memset',
    'malloc, free',
    'other crates',
]


def layer(path, symbol):
    """The layer of a function's own instructions: `path` is its source file, `symbol` its name."""
    if 'aws-lc' in path or 'aws_lc' in symbol:
        return LAYERS[0]
    if 'rustls' in path:
        return LAYERS[1]
    if 'tokio-1.' in path:
        return LAYERS[2] if '/runtime/time/' in path else LAYERS[3]
    if 'sys/pal/unix/time.rs' in path or 'sys/time/' in path or 'clock_gettime' in symbol:
        return LAYERS[2]
    if path.startswith('proxy/src/') or '/proxy/src/' in path:
        return LAYERS[4]
    if path == '???':
        if re.search(r'mem(cpy|move|set)', symbol):
            return LAYERS[5]
        if re.search(r'malloc|free|_int_|realloc', symbol):
            return LAYERS[6]
        return LAYERS[7]
    if 'library/' in path:  # std or core, inlined: the crate of the function it is in
        if 'mesh_proxy' in symbol:
            return LAYERS[4]
        if 'rustls' in symbol:
            return LAYERS[1]
        if symbol.startswith('tokio::') or '<tokio::' in symbol:
            return LAYERS[3]
    return LAYERS[7]




def functions(path):
    """Each function's own instructions in one callgrind file."""
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


def dumps(cg):
    """{(load, pid): path} of a run's dumps (callgrind_control --dump=paced|full)."""
    found = {}
    for path in glob.glob(f'{cg}/callgrind.*.*'):
        with open(path, errors='replace') as f:
            for line in f:
                if line.startswith('desc: Trigger: '):
                    found[(line.split()[-1], int(path.split('.')[-2]))] = path
                    break
    return found


def sides(cg):
    """{(load, side): path}: the sidecar that started first (lower pid) is the server side."""
    found = dumps(cg)
    pids = sorted({pid for _, pid in found})
    if len(pids) != 2:
        sys.exit(f'layers: expected the dumps of two sidecars in {cg}, found pids {pids}')
    names = {pids[0]: 'server side', pids[1]: 'client side'}
    return {(load, names[pid]): path for (load, pid), path in found.items()}


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    dir_a, n_a, dir_b, n_b = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    if n_b <= n_a:
        sys.exit('layers: the second run must have more requests than the first')
    a, b = sides(dir_a), sides(dir_b)
    columns = [k for k in (('paced', 'server side'), ('paced', 'client side'),
                           ('full', 'server side'), ('full', 'client side')) if k in a and k in b]
    per = {}
    for key in columns:
        fa, fb = functions(a[key]), functions(b[key])
        by_layer = collections.Counter()
        for f in set(fa) | set(fb):
            by_layer[layer(*f)] += fb[f] - fa[f]
        per[key] = {k: v / (n_b - n_a) for k, v in by_layer.items()}
    print(f'{"instructions a request":<24}' + ''.join(f'{l + " " + s.split()[0]:>16}' for l, s in columns))
    for name in LAYERS:
        print(f'{name:<24}' + ''.join(f'{per[k].get(name, 0):>16,.0f}' for k in columns))
    print(f'{"total":<24}' + ''.join(f'{sum(per[k].values()):>16,.0f}' for k in columns))


if __name__ == '__main__':
    main()
