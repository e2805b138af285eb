"""What a contender's system calls cost by whom they wake, from a `perf script` of
raw_syscalls:sys_enter, raw_syscalls:sys_exit and sched:sched_waking recorded on all CPUs
(benches/wakeups.sh makes it). Read on stdin, fields `pid tid cpu time event trace`.

Each system call of the contender's processes (PIDS) is put in one class by the tasks it woke
while it ran (the sched_waking events its thread emitted between its enter and its exit): one
on another CPU than the caller's, only ones on the caller's CPU, or none. Prints, per call and
class, the calls per request, their median time and their time per request. The calls that
wait (epoll, futex, nanosleep) are left out: their time is mostly asleep. The tracepoints slow
every call a little, so the times are for comparing classes and contenders, not absolute.

    perf script -F pid,tid,cpu,time,event,trace | python3 wake-costs.py NAME PIDS REQUESTS
"""

import re
import statistics
import sys

LINE = re.compile(
    r"^\s*(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$"
)
CLASSES = ("wakes a task on another CPU", "wakes tasks on its own CPU", "wakes none")
NAMES = {
    "0": "read", "1": "write", "17": "pread64", "19": "readv", "20": "writev", "44": "sendto",
    "45": "recvfrom", "46": "sendmsg", "47": "recvmsg", "275": "splice", "288": "accept4",
}
# poll, select, nanosleep, futex, clock_nanosleep, epoll_wait, pselect6, ppoll, epoll_pwait,
# epoll_pwait2: calls that may sleep, left out.
WAITS = {"7", "23", "35", "202", "230", "232", "270", "271", "281", "441"}


def main() -> None:
    name, pids, requests = sys.argv[1], set(sys.argv[2].split(",")), int(sys.argv[3])
    open_calls: dict[str, tuple[str, float, int, list[int]]] = {}
    durations: dict[tuple[str, str], list[float]] = {}
    for line in sys.stdin:
        m = LINE.match(line)
        if not m or m[1] not in pids:
            continue
        tid, cpu, time, event, trace = m[2], int(m[3]), float(m[4]), m[5], m[6]
        if event == "raw_syscalls:sys_enter":
            nr = re.match(r"NR (\d+)", trace)
            if nr and nr[1] not in WAITS:
                open_calls[tid] = (nr[1], time, cpu, [])
        elif event == "sched:sched_waking" and tid in open_calls:
            target = re.search(r"target_cpu=(\d+)", trace)
            if target:
                open_calls[tid][3].append(int(target[1]))
        elif event == "raw_syscalls:sys_exit" and tid in open_calls:
            nr, start, cpu, woken = open_calls.pop(tid)
            if any(t != cpu for t in woken):
                cls = CLASSES[0]
            elif woken:
                cls = CLASSES[1]
            else:
                cls = CLASSES[2]
            call = NAMES.get(nr, f"#{nr}")
            durations.setdefault((call, cls), []).append((time - start) * 1e6)
    rows = sorted(durations.items(), key=lambda kv: (CLASSES.index(kv[0][1]), -sum(kv[1])))
    for (call, cls), d in rows:
        if len(d) / requests < 0.05:
            continue
        print(
            f"{name:<16} {call:<9} {cls:<28} {len(d) / requests:>9.2f} "
            f"{statistics.median(d):>10.1f} {sum(d) / requests:>9.1f}"
        )


if __name__ == "__main__":
    main()
