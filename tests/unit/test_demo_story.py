"""What `breaker demo` says the packets showed: read from the outside hosts' record only."""

from __future__ import annotations

import datetime as dt

from breaker_tooling.demo.story import packet_lines
from breaker_tooling.localcluster import packets
from breaker_tooling.localcluster.outside import Flow, Report

ORIGIN = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
START = ORIGIN.timestamp()
POD = "10.244.49.3"
TRIPPED = START + 39.2
AFTER = {**dict.fromkeys(packets.DESTINATIONS, False), "cluster dns": True}


def flow(service: str, opened: float, last: float, closed: float | None) -> Flow:
    why = "read: connection reset by peer" if closed else None
    return Flow(service, f"{POD}:40190", START + opened, START + last, START + last, closed, why)


def test_each_connection_open_at_the_trip_says_when_it_was_cut_and_its_last_byte() -> None:
    report = Report(
        START + 50,
        (
            flow("tunnel", 12.0, 39.0, START + 39.4),
            flow("pool", 30.0, 39.5, START + 39.6),
            flow("tunnel", 45.0, 45.1, None),  # opened after the trip: another story
        ),
        ({"time": START + 38.0, "remote": f"{POD}:5353", "name": "q1.x.", "type": "TXT"},),
    )
    lines = packet_lines(report, POD, TRIPPED, ORIGIN, AFTER)
    assert lines == [
        "  reverse tunnel to 198.51.100.4:22, open since +12.0s: reset at +39.4s, 0.2 s after "
        "the trip; last byte +39.0s (none after the trip)",
        "  mining pool to 203.0.113.7:3333, open since +30.0s: reset at +39.6s, 0.4 s after the "
        "trip; last byte +39.5s (0.3 s after it)",
        "  DNS TXT queries to 203.0.113.53:53: 1 answered, the last at +38.0s",
        "  after the trip, from inside the agent's pod: pool refused, ssh refused, "
        "outside dns refused, cluster dns REACHED",
    ]


def test_a_connection_still_open_is_said_so() -> None:
    report = Report(START + 50, (flow("tunnel", 12.0, 49.0, None), flow("pool", 30, 39, 1)), ())
    assert "STILL OPEN" in packet_lines(report, POD, TRIPPED, ORIGIN, AFTER)[0]


def test_a_connection_the_trip_came_before_is_said_to_have_never_got_out() -> None:
    report = Report(START + 50, (flow("tunnel", 12.0, 39.0, START + 39.4),), ())
    lines = packet_lines(report, POD, TRIPPED, ORIGIN, AFTER)
    assert lines[1] == (
        "  mining pool to 203.0.113.7:3333: no connection ever got out (the trip came first)"
    )
