"""A pod's address as its node knows it, before the API server does. Reads files.

The node agent fences a held pod off the world as soon as it has an address; a pod born
quarantined (a held workload's new pod) must be fenced before its processes run. The
kubelet reports the address to the API server only after the pod's containers started,
so the agent reads it from the node:

- libcni's cache of the pod networks it set up (containerd's and CRI-O's CNI calls write
  it, one JSON file per network, as the network is set up, before the pod's processes
  start), by the pod's uid;
- else, the network namespace of a process of the pod (its cgroup names the pod's uid).

Never an address of loopback, link-local or unspecified: the runtime records its loopback
network too, and a namespace not set up yet has loopback alone. Cutting by such an
address would cut the node's own connections.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
from pathlib import Path


def pod_address(text: str | None) -> str | None:
    """A pod's own address, or None: never loopback, link-local or unspecified (the
    runtime's loopback network, a namespace not set up yet). Cutting by such an address
    would cut the node's own connections."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    return str(address)


class CniRecords:
    """libcni's cache of the pod networks it set up (containerd's and CRI-O's CNI calls
    write it): pod uid -> IPv4 address. Each file is read once (a busy node keeps two per
    pod, and the agent looks every few milliseconds while a held pod starts); one being
    written is read again next time."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.read: dict[str, tuple[str, str] | None] = {}  # file -> (uid, address)

    def addresses(self, uids: set[str]) -> dict[str, str]:
        if not self.directory.is_dir():
            return {}
        names = set()
        for entry in os.scandir(self.directory):
            names.add(entry.name)
            if entry.name not in self.read:
                self._read(entry.name, Path(entry.path))
        self.read = {name: found for name, found in self.read.items() if name in names}
        return {found[0]: found[1] for found in self.read.values() if found and found[0] in uids}

    def _read(self, name: str, path: Path) -> None:
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # being written: read again next time
        try:
            uid = dict(cached.get("cniArgs") or []).get("K8S_POD_UID")
            found = None
            for ip in (cached.get("result") or {}).get("ips") or []:
                address = pod_address(str(ip.get("address", "")).split("/")[0])
                if uid and address is not None and ":" not in address:
                    found = (str(uid), address)
            self.read[name] = found
        except (TypeError, AttributeError, ValueError):
            self.read[name] = None  # not one of libcni's


def process_addresses(uids: set[str]) -> dict[str, str]:
    """Pod uid -> IPv4 address, from the network namespace of a process whose cgroup names
    the pod (the runtime's cache absent)."""
    names = {uid: (f"pod{uid}", f"pod{uid.replace('-', '_')}") for uid in uids}
    found: dict[str, str] = {}
    try:
        own = str(Path("/proc/self/ns/net").readlink())
    except OSError:
        return found
    for entry in os.scandir("/proc"):
        if len(found) == len(names) or not entry.name.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{entry.name}/cgroup").read_text()
        except OSError:
            continue
        uid = next(
            (u for u, n in names.items() if u not in found and any(x in cgroup for x in n)), None
        )
        if uid is None:
            continue
        try:
            if str(Path(f"/proc/{entry.name}/ns/net").readlink()) == own:
                continue  # in the node's namespace (CRI-O's conmon is in the pod's cgroup)
        except OSError:
            continue
        shown = subprocess.run(
            ["nsenter", f"--net=/proc/{entry.name}/ns/net", "ip", "-4", "-j", "addr", "show",
             "scope", "global"],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        with contextlib.suppress(ValueError):
            for link in json.loads(shown.stdout or "[]"):
                for address in link.get("addr_info") or []:
                    local = pod_address(str(address.get("local") or ""))
                    # Not yet set up, the pod's namespace has loopback alone: not its address.
                    if local is not None and address.get("scope") == "global":
                        found[uid] = local
    return found
