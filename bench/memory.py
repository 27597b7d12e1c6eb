"""Where the operator's memory goes: each index, the statuses it keeps, the per-Breaker
metrics, kopf's per-object memories, next to its resident and peak memory, once it has
settled on a cluster.

Run it in place of `breaker run`, against a fleet left up by ``fleet.py --keep`` (its
operator kubeconfig and Prometheus), with any of `breaker run`'s arguments after ``--``:

    KUBECONFIG=/tmp/breaker-bench-breaker-*/operator-kubeconfig \\
        .venv/bin/python bench/memory.py --settle 60 -- --prometheus-url http://127.0.0.1:30090

It starts the operator in this process, waits for its first pass and ``--settle`` seconds
more, measures, prints a table, writes ``bench/results/memory.json`` and stops. A deep size
counts each object once, in the first place it is reached from (the indexes first), and
stops at modules, classes and functions.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
OPAQUE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
)


def deep_mb(root: object, seen: set[int]) -> float:
    size, stack = 0, [root]
    while stack:
        found = stack.pop()
        if id(found) in seen or isinstance(found, OPAQUE):
            continue
        seen.add(id(found))
        size += sys.getsizeof(found)
        stack.extend(gc.get_referents(found))
    return round(size / 1e6, 1)


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(controller: Any, memories: list[Any]) -> dict[str, Any]:
    seen: set[int] = set()
    rows: dict[str, Any] = {}
    indexes = dict(controller.indexes)
    if controller.training is not None and hasattr(controller.training, "indexes"):
        indexes |= controller.training.indexes
    for name, index in sorted(indexes.items()):
        if len(index):
            rows[f"index {name}"] = {"objects": len(index), "mb": deep_mb(index, seen)}
    rows["written statuses"] = {
        "objects": len(controller.written),
        "mb": deep_mb(controller.written, seen),
    }
    from breaker import metrics

    rows["per-Breaker metrics"] = {
        "objects": len(metrics.STATES.breakers),
        "mb": deep_mb(metrics.STATES.breakers, seen),
    }
    for memory in memories:
        rows["kopf per-object memories"] = {
            "objects": len(memory._items),
            "mb": deep_mb(memory._items, seen),
        }
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return {
        "rss_mb": status_mb("VmRSS:"),
        "peak_rss_mb": status_mb("VmHWM:"),
        "parts": rows,
        "most_common_objects": counts.most_common(12),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--settle", type=float, default=60.0, help="seconds after first pass")
    parser.add_argument("run_args", nargs="*", help="`breaker run` arguments (after --)")
    args = parser.parse_args()

    from kopf._core.reactor import inventory

    from breaker.cli import main as breaker_main
    from breaker.controllers import breakers

    memories: list[Any] = []
    controllers: list[Any] = []
    make_memories = inventory.ResourceMemories.__init__
    make_controller = breakers.BreakerController.__init__

    def remember_memories(self: Any, *a: Any, **k: Any) -> None:
        make_memories(self, *a, **k)
        memories.append(self)

    def remember_controller(self: Any, *a: Any, **k: Any) -> None:
        make_controller(self, *a, **k)
        controllers.append(self)

    inventory.ResourceMemories.__init__ = remember_memories  # type: ignore[method-assign]
    breakers.BreakerController.__init__ = remember_controller  # type: ignore[method-assign]
    began = time.monotonic()

    def watch() -> None:
        while not (controllers and controllers[0].ready and controllers[0].compiled):
            time.sleep(1)
        first = time.monotonic() - began
        time.sleep(args.settle)
        found = measure(controllers[0], memories) | {"first_pass_s": round(first, 1)}
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "memory.json").write_text(json.dumps(found, indent=2) + "\n")
        print(f"resident {found['rss_mb']} MB, peak {found['peak_rss_mb']} MB", flush=True)
        for name, row in found["parts"].items():
            print(f"  {name:<40} {row['objects']:>8} objects {row['mb']:>8} MB", flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, daemon=True).start()
    return breaker_main(["run", "--metrics-port", "0", *args.run_args])


if __name__ == "__main__":
    sys.exit(main())
