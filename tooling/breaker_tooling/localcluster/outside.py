"""The hosts outside the cluster, as the real node's pods reach them, and what they saw.

They run in a network namespace of the harness's (``cluster/go/node/outside``) on
addresses of the documentation ranges, and tell what they saw over a unix socket: every
connection with the time of its last byte each way (the pods' TCP connections, their UDP
and ICMP echo flows, and the connections the "SSH server" dials into a pod), and every DNS
question.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TUNNEL = ("198.51.100.4", 22)  # the "SSH server" the reverse tunnel reaches
UDP = ("198.51.100.4", 4500)  # a UDP tunnel's far end: answers every datagram
POOL = ("203.0.113.7", 3333)  # the mining pool
DNS = ("203.0.113.53", 53)  # an authoritative DNS server outside (and the cluster's upstream)
ADDRESSES = (TUNNEL[0], POOL[0], DNS[0])
# The link between the node's namespace and the outside one, and the ranges routed over it.
OUTSIDE_GATEWAY = "203.0.113.1"
NODE_SIDE = "203.0.113.254"
RANGES = ("198.51.100.0/24", "203.0.113.0/24")


def address(endpoint: tuple[str, int]) -> str:
    return f"{endpoint[0]}:{endpoint[1]}"


@dataclass(frozen=True)
class Flow:
    """One connection an outside host accepted."""

    service: str  # tunnel, pool, udp, ping; inbound: dialled from outside into the pod
    remote: str  # the pod's address and port as the outside host saw them
    opened: float
    last_in: float  # the last byte from the pod (0: none yet)
    last_out: float  # the last byte written to it
    closed: float | None
    why: str | None
    local: str = ""  # this host's end, of a connection it dialled into a pod

    @property
    def last_byte(self) -> float:
        return max(self.last_in, self.last_out)


@dataclass(frozen=True)
class Report:
    now: float
    flows: tuple[Flow, ...]
    queries: tuple[dict[str, Any], ...]

    def of(self, service: str, from_ip: str) -> list[Flow]:
        return [
            f for f in self.flows if f.service == service and f.remote.startswith(f"{from_ip}:")
        ]

    def asked(self, from_ip: str, since: float = 0.0) -> list[dict[str, Any]]:
        """DNS questions from ``from_ip`` (or relayed by a resolver at it) since then."""
        return [
            q for q in self.queries if q["remote"].startswith(f"{from_ip}:") and q["time"] >= since
        ]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("outside", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(self.path))


def _call(socket_path: Path, method: str, path: str) -> bytes:
    connection = _UnixConnection(socket_path)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {body[:200]!r}")
        return body
    finally:
        connection.close()


def report(socket_path: Path) -> Report:
    raw = json.loads(_call(socket_path, "GET", "/report"))
    flows = tuple(
        Flow(
            f["service"],
            f["remote"],
            f["opened"],
            f.get("lastIn") or 0.0,
            f.get("lastOut") or 0.0,
            f.get("closed"),
            f.get("closeWhy"),
            f.get("local") or "",
        )
        for f in raw.get("flows") or []
    )
    return Report(raw["now"], flows, tuple(raw.get("queries") or []))


def clear(socket_path: Path) -> None:
    _call(socket_path, "POST", "/clear")


def dial(socket_path: Path, to: str, source: str = TUNNEL[0]) -> None:
    """Open a connection from ``source`` (an outside address) to ``to`` (a pod's
    address:port) and carry it: a line each way every second, recorded as ``inbound``."""
    _call(socket_path, "POST", f"/dial?to={to}&from={source}")
