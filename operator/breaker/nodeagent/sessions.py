"""Channels into a quarantined pod that no packet filter sees: port-forward streams and exec
sessions opened before the trip. Pure: the agent reads ``ss`` and ``/proc`` and hands the
text here.

- **port-forward.** The kubelet hands a port-forward to the container runtime, which dials
  the pod's port on its loopback from inside the pod's network namespace and copies the
  bytes to the API server's stream. So each stream is a loopback TCP connection in the
  pod's namespace whose one end belongs to a process outside the pod (containerd, its
  own network namespace is the node's). The workload's own loopback connections have both
  ends in the pod's processes: they are left alone. Both ends of a stream are destroyed
  (``ss -K``): the runtime ends the stream, and ``kubectl port-forward`` sees it end.
- **exec.** An exec'd process is started by the container's shim, as the container's
  first process was, and joins the container's cgroup. So among the processes in the
  pod's network namespace whose parent is outside it (the sandbox's, each container's
  first, each exec's), those that share a cgroup with an earlier one are exec sessions.
  They are listed (the Breaker's status shows them) and, when the policy says
  ``killSessions``, those begun before the quarantine are ended. An attach has no process
  of its own (the runtime copies the first process's stdio): nothing lists it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_USERS = re.compile(r"pid=(\d+)")


@dataclass(frozen=True)
class Socket:
    """One established TCP socket in a pod's namespace, and the processes holding it."""

    local: str  # address:port, as ss prints it
    peer: str
    pids: tuple[int, ...]

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.local) and _is_loopback(self.peer)


def parse_ss(text: str) -> list[Socket]:
    """``ss -Htnp state established`` lines: ``0 0 127.0.0.1:38712 127.0.0.1:2222
    users:(("containerd",pid=1234,fd=55))``."""
    found = []
    for line in text.splitlines():
        words = line.split()
        ends = [w for w in words if ":" in w and not w.startswith("users:")]
        if len(ends) < 2:
            continue
        users = next((w for w in words if w.startswith("users:")), "")
        found.append(Socket(ends[0], ends[1], tuple(int(p) for p in _USERS.findall(users))))
    return found


def _is_loopback(end: str) -> bool:
    address = end.rsplit(":", 1)[0].strip("[]")
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def port_forwards(
    sockets: Iterable[Socket], netns_of: Mapping[int, str], pod_netns: str
) -> list[Socket]:
    """The loopback sockets of the pod held by a process outside it (a port-forward's
    runtime end), and their peers (the pod's end): both are cut. ``netns_of`` gives each
    process's network namespace, as ``/proc/PID/ns/net`` reads."""
    listed = list(sockets)
    outside = [
        s
        for s in listed
        if s.loopback and s.pids and any(netns_of.get(p, pod_netns) != pod_netns for p in s.pids)
    ]
    ends = {(s.local, s.peer) for s in outside}
    peers = [s for s in listed if (s.peer, s.local) in ends and (s.local, s.peer) not in ends]
    return outside + peers


def kill_filter(sockets: Iterable[Socket]) -> str:
    """An ``ss -K`` filter for exactly these sockets."""
    return " or ".join(f"( src {s.local} and dst {s.peer} )" for s in sockets)


@dataclass(frozen=True)
class Process:
    """What /proc says of one process."""

    pid: int
    ppid: int
    netns: str  # the link of /proc/PID/ns/net: net:[4026532123]
    cgroup: str  # the text of /proc/PID/cgroup: the same for a container's processes
    started: float  # unix time
    command: str


@dataclass(frozen=True)
class Session:
    """An exec into the pod: its process, what it runs, since when."""

    pid: int
    command: str
    started: float


def exec_sessions(processes: Iterable[Process], pod_netns: str) -> list[Session]:
    """The exec sessions among the processes: started from outside the pod (their parent is
    known, and not in its network namespace) into a container that already had a first
    process, by that first process's parent (the container's shim). A process whose parent
    is not known (it went while the table was read) is never one: nothing is ended on a
    guess."""
    table = {p.pid: p for p in processes}
    roots = [
        p
        for p in table.values()
        if p.netns == pod_netns and p.ppid in table and table[p.ppid].netns != pod_netns
    ]
    by_container: dict[str, list[Process]] = {}
    for process in roots:
        by_container.setdefault(process.cgroup, []).append(process)
    sessions = []
    for started in by_container.values():
        first, *later = sorted(started, key=lambda p: (p.started, p.pid))
        sessions += [Session(p.pid, p.command, p.started) for p in later if p.ppid == first.ppid]
    return sorted(sessions, key=lambda s: (s.started, s.pid))


def descendants(processes: Iterable[Process], pid: int) -> list[int]:
    """The processes below ``pid`` (an exec session's shell and what it started), deepest
    first: ended before it, so that none is left to its container."""
    children: dict[int, list[int]] = {}
    for process in processes:
        children.setdefault(process.ppid, []).append(process.pid)
    found: list[int] = []
    stack = list(children.get(pid, ()))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, ()))
    return found[::-1]


def parse_stat(text: str) -> tuple[int, int]:
    """(parent pid, start time in clock ticks since boot) from /proc/PID/stat; the command
    in parentheses may hold spaces and parentheses itself."""
    after = text[text.rindex(")") + 2 :].split()
    return int(after[1]), int(after[19])
