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
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from callgrind import dumps, functions, pids  # noqa: E402

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


def sides(cg):
    """{(load, side): path}: the sidecar that started first (lower pid) is the server side."""
    started = pids(cg)
    if len(started) != 2:
        sys.exit(f'layers: expected the dumps of two sidecars in {cg}, found pids {started}')
    return {(load, side): path
            for pid, side in zip(started, ('server side', 'client side'))
            for load, (_, path) in dumps(cg, pid).items()}


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
