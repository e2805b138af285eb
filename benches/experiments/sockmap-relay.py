#!/usr/bin/env python3
"""Feasibility prototype, not part of the mesh: an L4 relay whose bytes go socket -> socket
inside the kernel, never through the process (a SOCKHASH holding both sockets of each relayed
connection, and an sk_skb verdict program that redirects each skb to the other socket with
bpf_sk_redirect_hash, keyed by the receiving socket's 4-tuple). Needs root and a kernel with
CONFIG_BPF_STREAM_PARSER. What it showed is in benches/RESULTS.md ("Tried and not kept").

  taskset -c 1 iperf3 -s -B 127.0.0.1 -p 29002 &
  taskset -c 1 python3 benches/experiments/sockmap-relay.py 29001 29002 &
  taskset -c 0 iperf3 -c 127.0.0.1 -p 29001 -t 5 -f g

User space only sets the sockets up and watches for EOF; it prints how many bytes it saw (0
when every byte went through the kernel's redirect)."""
import ctypes, os, socket, struct, sys, threading, select
libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = 321
def bpf(cmd, attr: bytes):
    buf = ctypes.create_string_buffer(attr, 160)
    r = libc.syscall(SYS_bpf, cmd, buf, 160)
    if r < 0:
        e = ctypes.get_errno(); raise OSError(e, f"bpf cmd {cmd}: {os.strerror(e)}")
    return r, buf
MAP_CREATE, MAP_UPDATE, MAP_DELETE, PROG_LOAD, PROG_ATTACH = 0, 2, 3, 5, 8
# From linux/bpf.h: BPF_MAP_TYPE_SOCKHASH, BPF_PROG_TYPE_SK_SKB, BPF_SK_SKB_VERDICT, BPF_FUNC_sk_redirect_hash.
SOCKHASH, SK_SKB, SK_SKB_VERDICT, REDIRECT_HASH = 18, 14, 38, 72
mapfd, _ = bpf(MAP_CREATE, struct.pack('<IIIII', SOCKHASH, 16, 4, 4096, 0))
def ins(code, dst=0, src=0, off=0, imm=0): return struct.pack('<BBhi', code, dst | (src << 4), off, imm)
prog = b''.join([
    ins(0xbf, 6, 1),
    ins(0x61, 2, 6, 92), ins(0x63, 10, 2, -16),
    ins(0x61, 2, 6, 96), ins(0x63, 10, 2, -12),
    ins(0x61, 2, 6, 132), ins(0x63, 10, 2, -8),
    ins(0x61, 2, 6, 136), ins(0x63, 10, 2, -4),
    ins(0xbf, 1, 6),
    ins(0x18, 2, 1, 0, mapfd), ins(0, 0, 0, 0, 0),
    ins(0xbf, 3, 10), ins(0x07, 3, 0, 0, -16),
    ins(0xb7, 4, 0, 0, 0),
    ins(0x85, 0, 0, 0, REDIRECT_HASH),
    ins(0x55, 0, 0, 1, 0),
    ins(0xb7, 0, 0, 0, 1),
    ins(0x95),
])
lic = ctypes.create_string_buffer(b"GPL")
code = ctypes.create_string_buffer(prog, len(prog))
log = ctypes.create_string_buffer(65536)
attr = struct.pack('<IIQQIIQ', SK_SKB, len(prog) // 8, ctypes.addressof(code), ctypes.addressof(lic), 1, 65536, ctypes.addressof(log))
try:
    progfd, _ = bpf(PROG_LOAD, attr)
except OSError as e:
    print(e, log.value.decode(errors='replace'), file=sys.stderr); sys.exit(1)
bpf(PROG_ATTACH, struct.pack('<IIII', mapfd, progfd, SK_SKB_VERDICT, 0))
def key(s):
    # As the program reads it from struct __sk_buff: remote_ip4, local_ip4 (network order),
    # remote_port (network order, shifted left by 16 on little-endian), local_port (host order).
    lip, lport = s.getsockname(); rip, rport = s.getpeername()
    return socket.inet_aton(rip) + socket.inet_aton(lip) + b'\0\0' + struct.pack('>H', rport) + struct.pack('<I', lport)
def update(k, fd):
    kb = ctypes.create_string_buffer(k, 16); vb = ctypes.create_string_buffer(struct.pack('<I', fd), 4)
    bpf(MAP_UPDATE, struct.pack('<IIQQQ', mapfd, 0, ctypes.addressof(kb), ctypes.addressof(vb), 0))
passed = [0]
def serve(d):
    u = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
    for s in (d, u): s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); s.setblocking(False)
    update(key(d), u.fileno()); update(key(u), d.fileno())
    peer = {d: u, u: d}; open_ = {d, u}
    while open_:
        r, _, _ = select.select(list(open_), [], [])
        for s in r:
            try: b = s.recv(65536)
            except BlockingIOError: continue
            if b: passed[0] += len(b); peer[s].setblocking(True); peer[s].sendall(b); peer[s].setblocking(False)
            else:
                open_.discard(s)
                try: peer[s].shutdown(socket.SHUT_WR)
                except OSError: pass
    print(f"conn done; bytes seen by user space: {passed[0]}", file=sys.stderr)
    d.close(); u.close()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(('127.0.0.1', int(sys.argv[1]))); l.listen(64)
print("ready", file=sys.stderr, flush=True)
while True:
    d, _ = l.accept()
    threading.Thread(target=serve, args=(d,), daemon=True).start()
