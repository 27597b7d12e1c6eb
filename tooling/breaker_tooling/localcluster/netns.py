"""Network namespaces, links and what a real node leaves on the host: made and removed.

Thin wrappers over iproute2, nsenter and the /proc and /sys views, each failing with a
ClusterError that names what it tried. Only names this package chose are ever touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from breaker_tooling.localcluster.errors import ClusterError

NETNS_DIR = Path("/var/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def run(component: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ClusterError(
            component,
            f"`{' '.join(command)}` failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[:500]}",
        )
    return result


def inside(netns: str, *command: str) -> list[str]:
    """``command`` run in a network namespace, and nothing else of the host changed (unlike
    `ip netns exec`, nsenter leaves the mount namespace alone: the kubelet's mounts must be
    the ones containerd sees)."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *command]


def exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def add(netns: str) -> None:
    if not exists(netns):
        run("network", "ip", "netns", "add", netns)
    run("network", "ip", "-n", netns, "link", "set", "lo", "up")


def delete(netns: str) -> None:
    if exists(netns):
        run("network", "ip", "netns", "delete", netns, check=False)


def host_addresses() -> list[ipaddress.IPv4Interface]:
    """Every IPv4 address on the host's interfaces."""
    shown = run("network", "ip", "-4", "-j", "addr", "show").stdout
    return [
        ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
        for link in json.loads(shown or "[]")
        for a in link.get("addr_info") or []
    ]


def addresses_in(netns: str) -> list[ipaddress.IPv4Address]:
    shown = run("network", "ip", "-n", netns, "-4", "-j", "addr", "show", check=False).stdout
    return [
        ipaddress.IPv4Address(a["local"])
        for link in json.loads(shown or "[]")
        for a in link.get("addr_info") or []
    ]


def sysctl(netns: str | None, key: str, value: str) -> None:
    command = ["sysctl", "-q", "-w", f"{key}={value}"]
    run("network", *(inside(netns, *command) if netns else command))


def pods_netns(cidr: ipaddress.IPv4Network) -> list[str]:
    """The network namespaces (made by the CNI for pods) holding an address in ``cidr``."""
    if not NETNS_DIR.is_dir():
        return []
    return [
        path.name
        for path in sorted(NETNS_DIR.iterdir())
        if path.name.startswith("cni-") and any(a in cidr for a in addresses_in(path.name))
    ]


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory``, deepest first."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(directory) or point.startswith(f"{directory}/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_under(directory: Path) -> None:
    for point in mounts_under(directory):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def kill_matching(fragments: Sequence[str]) -> list[int]:
    """SIGKILL every process whose command line holds all of ``fragments`` (leftover shims
    of this node's containerd, named by its socket). Returns their pids."""
    killed = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(fragment in command for fragment in fragments):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
    return killed


def cgroup_hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies (each v1 controller, the named and unified ones)."""
    if not CGROUP_ROOT.is_dir():
        return []
    return [p for p in sorted(CGROUP_ROOT.iterdir()) if p.is_dir() and not p.is_symlink()]


def make_cgroup(name: str) -> None:
    """A cgroup of our own in every hierarchy, cpusets copied from the parent (an empty
    cpuset refuses every task)."""
    for hierarchy in cgroup_hierarchies():
        child = hierarchy / name
        child.mkdir(exist_ok=True)
        for knob in ("cpuset.cpus", "cpuset.mems"):
            parent = hierarchy / knob
            if parent.exists() and not (child / knob).read_text().strip():
                (child / knob).write_text(parent.read_text())


def remove_cgroup(name: str) -> list[str]:
    """Remove our cgroup from every hierarchy, children first; the paths that would not go.
    A process still in it (a pod's sandbox whose shim went first) is the node's: killed."""
    for _ in range(20):
        left = _processes_in(name)
        if not left:
            break
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    stuck = []
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / name
        if not top.is_dir():
            continue
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                directory.rmdir()
        try:
            top.rmdir()
        except OSError:
            stuck.append(str(top))
    return stuck


def _processes_in(name: str) -> set[int]:
    found: set[int] = set()
    for hierarchy in cgroup_hierarchies():
        top = hierarchy / name
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(line) for line in procs.read_text().split())
    return found


def remove_if_empty(directories: Iterable[Path]) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()
