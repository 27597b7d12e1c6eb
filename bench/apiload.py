"""Benchmark: what the operator asks of the API server, and what it holds, on a fleet of
real-sized objects. On a bench cluster of its own (``fleet.py``'s), with ``--size`` guarded
one-GPU Jobs whose pods are the size real ones are and 8-GPU nodes the size real ones are
(``realistic.py``: 1,250 nodes at 10,000):

- **memory**: each operator's resident memory once settled, and its peak on a restart on
  the whole fleet (VmHWM), against the chart's default limit: for the operator serving
  everything, and (``--shards``) for the queue alone and each namespace shard;
- **after an API server restart**: every request of the operator's ServiceAccount that
  the API server's audit log records for ``--after-minutes`` from the restart, by verb and
  resource, and when each kind was listed again (a streamed initial list counts as one:
  WatchList lists are watches with ``sendInitialEvents``): one relist per kind, spread;
- **requests at rest**: the same over ``--rest-minutes`` after that (no list, no
  polling: watches, their renewals, and the writes the work needs). Last, so that a run
  stopped early (SIGTERM) still counts the window it waited.

Figures, not assertions. Writes ``bench/results/apiload.json``.

    .venv/bin/python bench/apiload.py [--size 10000] [--shards 2] [--rest-minutes 30]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

import fleet

RESULTS = Path(__file__).parent / "results"
CHART_LIMIT_MIB = 512  # helm/breaker/values.yaml: resources.limits.memory
DONE = "first pass done"  # what an operator serving breakers logs after its first pass


def audit_flags(work: Path) -> tuple[str, ...]:
    """Audit the bench operators' requests only, once each, as they are received."""
    namespace, account = fleet.ACCOUNT
    policy = {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["ResponseStarted", "ResponseComplete", "Panic"],
        "rules": [
            {"level": "Metadata", "users": [f"system:serviceaccount:{namespace}:{account}"]},
            {"level": "None"},
        ],
    }
    path = work / "audit-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return (
        f"--audit-policy-file={path}",
        f"--audit-log-path={work / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-maxsize=0",
    )


def requests(log: Path, since: float, until: float) -> list[dict[str, Any]]:
    """The audited requests received between two wall-clock times."""
    found = []
    with log.open() as lines:
        for line in lines:
            event = json.loads(line)
            stamp = dt.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
            if since <= stamp < until:
                found.append({**event, "at": stamp})
    return found


def kind_of(event: dict[str, Any]) -> str:
    """Its verb, a streamed initial list told apart from a watch."""
    verb = str(event.get("verb"))
    if verb == "watch" and "sendInitialEvents=true" in str(event.get("requestURI")):
        return "watch-list"
    return verb


def by_verb_and_resource(events: list[dict[str, Any]]) -> dict[str, int]:
    counted = collections.Counter(
        f"{kind_of(e)} {(e.get('objectRef') or {}).get('resource', '-')}" for e in events
    )
    return dict(sorted(counted.items()))


def relists(events: list[dict[str, Any]], restarted: float) -> dict[str, list[float]]:
    """Seconds after the restart at which each resource was listed (or stream-listed)."""
    found: dict[str, list[float]] = collections.defaultdict(list)
    for event in events:
        if kind_of(event) in ("list", "watch-list"):
            resource = (event.get("objectRef") or {}).get("resource", "-")
            found[resource].append(round(event["at"] - restarted, 1))
    return dict(sorted(found.items()))


def measured(bench: fleet.Bench, shards: int, settle_minutes: float) -> dict[str, Any]:
    """The operators of this layout on the whole fleet: settled memory (``settle_minutes``
    after their first pass), then a restart's peak."""
    bench.stop()
    bench.measured.clear()
    bench.shards = shards
    logs = {name: bench.work / f"{name}.log" for name, _ in fleet.operators(shards)}
    before = {
        name: log.read_text().count(DONE) if log.exists() else 0 for name, log in logs.items()
    }
    bench.start()
    serving = [name for name in logs if name != "queue"]
    fleet.wait(
        lambda: all(logs[n].read_text().count(DONE) > before[n] for n in serving),
        "the operators' first pass",
        3600,
        every=1,
    )
    time.sleep(settle_minutes * 60)
    settled = {name: fleet.rss_mb(pid) for name, pid in bench.measured.items()}
    restart = bench.restart()
    peaks = restart["restart_peak_rss_mb_by_operator"]
    rows = {
        name: {
            "settled_rss_mb": settled[name],
            "restart_peak_rss_mb": peaks[name],
            "peak_over_settled": round(peaks[name] / settled[name], 2),
            "under_chart_limit": peaks[name] < CHART_LIMIT_MIB * 1.048576,
        }
        for name in settled
    }
    return {"restart_first_pass_s": restart["restart_first_pass_s"], "operators": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", type=int, default=10000, help="guarded one-GPU Jobs")
    parser.add_argument("--shards", type=int, default=2, help="0: the combined operator only")
    parser.add_argument("--rest-minutes", type=float, default=30.0)
    parser.add_argument("--after-minutes", type=float, default=5.0)
    parser.add_argument("--settle-minutes", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true", help="leave the bench cluster up")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    work = Path(tempfile.mkdtemp(prefix="breaker-bench-apiload-"))
    os.environ["BREAKER_CLUSTER_DIR"] = str(work / "cluster")
    os.environ.setdefault("BREAKER_CLUSTER_PORT_OFFSET", "1000")
    os.environ.setdefault("BREAKER_CLUSTER_REAL_NODE", "0")
    began = time.monotonic()
    flags = audit_flags(work)
    bench = fleet.Bench("breaker", [args.size], 0, work, [], realistic=True, apiserver_flags=flags)
    result: dict[str, Any] = {
        "size": args.size,
        "nodes": 0,
        "settle_minutes": args.settle_minutes,
        "memory": {},
    }
    try:
        bench.set_up()
        print(f"{args.size} guarded Jobs, real-sized:", flush=True)
        bench.grow(args.size, 0)  # with no operator yet: each layout is started on it whole
        result["nodes"] = bench.nodes
        layouts = ([args.shards] if args.shards > 1 else []) + [1]
        for shards in layouts:  # the combined operator last: it is the one counted at rest
            name = "combined" if shards == 1 else f"queue and {shards} shards"
            result["memory"][name] = measured(bench, shards, args.settle_minutes)
            print(f"  {name}: {json.dumps(result['memory'][name])}", flush=True)

        log = work / "audit.log"
        restarted = time.time()
        bench.cluster.restart_apiserver(flags=flags, ready_within=900)  # 120 s was short at 10,000
        print(f"  API server restarted; {args.after_minutes:g} min after", flush=True)
        time.sleep(args.after_minutes * 60)
        after = requests(log, restarted, time.time())
        listed = relists(after, restarted)
        result["after_restart"] = {
            "minutes": args.after_minutes,
            "requests": len(after),
            "by_verb_and_resource": by_verb_and_resource(after),
            "relists_by_resource_s": listed,
            "relists_per_kind_max": max((len(v) for v in listed.values()), default=0),
            "relists_spread_s": round(
                max((max(v) for v in listed.values()), default=0)
                - min((min(v) for v in listed.values()), default=0),
                1,
            ),
        }
        print(f"  {json.dumps(result['after_restart'])}", flush=True)

        # At rest last: stopped early (SIGTERM), the window counted is what was waited.
        rest_from = time.time()
        print(f"  at rest for {args.rest_minutes:g} min", flush=True)
        try:
            time.sleep(args.rest_minutes * 60)
        finally:
            rest_until = time.time()
            at_rest = requests(log, rest_from, rest_until)
            result["at_rest"] = {
                "minutes": round((rest_until - rest_from) / 60, 1),
                "requests": len(at_rest),
                "by_verb_and_resource": by_verb_and_resource(at_rest),
                "lists": sum(1 for e in at_rest if kind_of(e) in ("list", "watch-list")),
            }
            print(f"  {json.dumps(result['at_rest'])}", flush=True)
    finally:
        bench.finish(result, "apiload.json", began, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
