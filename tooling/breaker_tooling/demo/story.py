"""What `breaker demo` prints of the incident: only facts the operator and the packets
recorded. Pure: it reads a Breaker's status (through the status contract) and the outside
hosts' record, and returns lines; the demo prints them and the tests read them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from breaker.api import containment
from breaker_tooling.localcluster import outside, packets

TENANT, OTHERS, WAITING = "rome-lab", "team-b", "team-c"
AGENT = "rl-agent"
BREAKER = f"{AGENT}-demo"
# The incident's order, compressed from an hour into half a minute: (seconds after the
# replay starts, what, the simulator's step). The agent's pod on the real node does the
# same on the same clock with real packets.
REPLAY = [
    (5, "probe", {"at": "5s", "until": "25s", "do": "internal-scan-slow"}),
    (12, "reverse SSH tunnel", {"at": "12s", "do": "reverse-ssh-tunnel"}),
    (30, "mining", {"at": "30s", "do": "mine-while-training"}),
    (30, "mining-pool egress", {"at": "30s", "do": "miner-pool-egress"}),
]
SCAN_AT, TUNNEL_AT, POOL_AT = 5, 12, 30


class DemoError(RuntimeError):
    pass


def _at(stamp: str | float, origin: dt.datetime, column: bool = True) -> str:
    """Seconds since the replay's start: ``+ 39.2s`` in the timeline's column, ``+39.2s``
    within a sentence."""
    if isinstance(stamp, str):
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    else:
        moment = dt.datetime.fromtimestamp(stamp, dt.UTC)
    seconds = (moment - origin).total_seconds()
    return f"+{seconds:5.1f}s" if column else f"+{seconds:.1f}s"


def _seconds(stamp: str, origin: dt.datetime) -> float:
    moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment - origin).total_seconds()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def timeline_lines(status: Mapping[str, Any], origin: dt.datetime) -> list[str]:
    """The timeline from a Breaker's status once containment is settled, each line a fact
    the operator recorded, timed from ``origin`` (the start of the replay)."""
    found = containment.read(status)
    if not found.settled or not found.contained:
        raise DemoError(f"containment is not done: {found.reason}: {found.message}")
    if found.seconds is None:
        raise DemoError("the breaker says Contained but records no timeToContainSeconds")
    evidence = status["evidence"][-1]
    trip = _seconds(status["lastTrip"], origin)
    events: list[tuple[float, str]] = [
        (
            float(offset),
            f"the agent starts: {what}"
            if offset <= trip
            else f"(the replay's {what}: the agent's pod was cut off and paused before it)",
        )
        for offset, what, _ in REPLAY
    ]
    fired = ", ".join(f"{s['name']}={s['value']:.3g}" for s in evidence["signals"])
    events.append((trip, f"signal seen: {fired} (rule {evidence['rule']})"))
    events.append((trip, f"breaker {BREAKER} {status['state']}"))
    pods = _count(len(evidence.get("pods") or []), "pod")
    signals = _count(len(evidence["signals"]), "signal")
    events.append((_seconds(evidence["time"], origin), f"evidence captured: {signals}, {pods}"))
    for action in found.actions:
        events.append((_seconds(action.at, origin), containment.describe(action, TENANT)))
    # In time order; at the same second the trip before what it did (a stable sort).
    lines = [f"  +{at:5.1f}s  {what}" for at, what in sorted(events, key=lambda e: e[0])]
    lines.append(f"  time to contain (evaluation to last action): {found.seconds:.3f} s")
    return lines


def packet_lines(
    report: outside.Report,
    pod_ip: str,
    tripped: float,
    origin: dt.datetime,
    reached: Mapping[str, bool],
) -> list[str]:
    """What the packets showed: each connection the agent's pod had open at the trip, when
    its last byte passed, and what the pod reached after the trip (probed from inside it)."""
    lines = []
    for service, endpoint, what in (
        ("tunnel", outside.TUNNEL, "reverse tunnel"),
        ("pool", outside.POOL, "mining pool"),
    ):
        flows = [f for f in report.of(service, pod_ip) if f.opened < tripped]
        if not flows:
            # The breaker tripped before the agent got this far (signals fire on their own
            # clocks): what it tried after the trip was refused, and none of it got out.
            later = [f for f in report.of(service, pod_ip) if f.opened >= tripped]
            lines.append(
                f"  {what} to {outside.address(endpoint)}: "
                + (
                    f"NO connection before the trip; {len(later)} got out after it"
                    if later
                    else "no connection ever got out (the trip came first)"
                )
            )
            continue
        first = min(f.opened for f in flows)
        last = max(f.last_byte for f in flows)
        ends = [f.closed for f in flows if f.closed is not None]
        since = f"{what} to {outside.address(endpoint)}, open since {_at(first, origin, False)}"
        if len(ends) < len(flows):
            lines.append(f"  {since}: STILL OPEN, last byte {_at(last, origin, False)}")
            continue
        cut = max(ends)
        after = "none after the trip" if last <= tripped else f"{last - tripped:.1f} s after it"
        lines.append(
            f"  {since}: reset at {_at(cut, origin, False)}, {cut - tripped:.1f} s after the "
            f"trip; last byte {_at(last, origin, False)} ({after})"
        )
    asked = [q for q in report.asked(pod_ip) if q["type"] == "TXT"]
    if asked:
        last_query = max(q["time"] for q in asked)
        lines.append(
            f"  DNS TXT queries to {outside.address(outside.DNS)}: {len(asked)} answered, the "
            f"last at {_at(last_query, origin, False)}"
        )
    said = ", ".join(f"{name} {'REACHED' if ok else 'refused'}" for name, ok in reached.items())
    lines.append(f"  after the trip, from inside the agent's pod: {said}")
    return lines


def refused_everywhere_but_dns(reached: Mapping[str, bool]) -> bool:
    return dict(reached) == {**dict.fromkeys(packets.DESTINATIONS, False), "cluster dns": True}
