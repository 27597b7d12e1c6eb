"""The node agent's flow counts: what one listing of a busy node's conntrack table costs.

A node's table is synthesised (``--entries`` TCP entries with byte counts, from
``--pods`` pods, half to the world), then passed to the agent's own code as a count does
it: parsed (``flows.parse_entries``), then accounted twice (the first listing only learns
where the counts stand; the second, parsed as it goes, is the steady state). It prints the
seconds per listing, the events handled per second (``Ledger.opened``, as for conntrack's NEW
events), and the memory the ledger holds afterwards (tracemalloc), and writes
``bench/results/flows.json``. A benchmark, never a test: the machine is shared and noisy.

    .venv/bin/python bench/flows.py [--entries 100000] [--pods 110]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

from breaker.nodeagent import accounting, flows

RESULTS = Path(__file__).parent / "results"


def table(entries: int, pods: int) -> tuple[str, dict[str, accounting.Source]]:
    sources = {f"10.244.7.{i + 2}": accounting.Source("jobs", f"pod-{i}") for i in range(pods)}
    addresses = list(sources)
    lines = []
    for i in range(entries):
        src = addresses[i % pods]
        dst = f"203.0.113.{i % 250 + 1}" if i % 2 else f"10.244.{i % 200}.{i % 250 + 1}"
        sport, dport = 20000 + i // pods % 40000, (443, 8080, 29500, 3000)[i % 4]
        lines.append(
            f"tcp      6 431999 ESTABLISHED src={src} dst={dst} sport={sport} dport={dport} "
            f"packets=10 bytes={1000 + i} src={dst} dst={src} sport={dport} dport={sport} "
            f"packets=9 bytes={2000 + i} [ASSURED] mark=0 use=1"
        )
    return "\n".join(lines), sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--pods", type=int, default=110)
    args = parser.parse_args()
    text, pods = table(args.entries, args.pods)

    ledger = accounting.Ledger()
    began = time.perf_counter()
    parsed_list = flows.parse_entries(text)
    parsed = time.perf_counter() - began
    began = time.perf_counter()
    ledger.account(parsed_list, pods)
    first = time.perf_counter() - began
    del parsed_list
    began = time.perf_counter()
    ledger.account(flows.iter_entries(text), pods)
    steady = time.perf_counter() - began

    # Memory apart: tracemalloc slows allocation several times over.
    tracemalloc.start()
    measured = accounting.Ledger()
    measured.account(flows.iter_entries(text), pods)
    measured.account(flows.iter_entries(text), pods)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    events = [e.flow for e in flows.parse_entries(text)][:50_000]
    began = time.perf_counter()
    for flow in events:
        ledger.opened(flow, pods[flow.src], 0.0)
    per_event = (time.perf_counter() - began) / len(events)

    figures = {
        "entries": args.entries,
        "pods": args.pods,
        "parse_seconds": round(parsed, 3),
        "first_account_seconds": round(first, 3),
        "listing_seconds": round(steady, 3),  # parsed and accounted
        "events_per_second": round(1 / per_event),
        "ledger_mib": round(held / 2**20, 1),
        "peak_mib": round(peak / 2**20, 1),
        "bytes_per_entry": round(held / args.entries),
    }
    for name, value in figures.items():
        print(f"{name:>22}  {value}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flows.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
