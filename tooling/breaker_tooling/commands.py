"""The developer tooling's commands of `breaker`: the local cluster, the demo, the
simulator and the CRD generator. `breaker.cli` adds them when this package is installed."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from breaker.cli import parse_time
from breaker.constants import GPU_RESOURCE
from breaker_tooling.localcluster.errors import ClusterError
from breaker_tooling.localcluster.nodes import GpuNodes, node_ready

if TYPE_CHECKING:
    from breaker.cli import Commands
    from breaker_tooling.localcluster import LocalCluster

Handler = Callable[[argparse.Namespace], int]


def add_commands(commands: Commands) -> None:
    _add_demo(commands)
    _add_sim(commands)
    _add_crds(commands)
    _add_cluster(commands)


def _reporting(handler: Handler) -> Handler:
    """A local cluster that cannot start says why in one line, without a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ClusterError as error:
            print(f"breaker: {error}", file=sys.stderr)
            return 1

    return run


def _cluster(args: argparse.Namespace) -> LocalCluster:
    from breaker_tooling.localcluster import LocalCluster

    nodes = (
        GpuNodes(count=args.nodes, gpus=args.gpus_per_node)
        if hasattr(args, "nodes")
        else GpuNodes()
    )
    return LocalCluster(nodes=nodes)


def _cluster_up(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.up()
    _print_nodes(cluster)
    print(f"\nexport KUBECONFIG={cluster.kubeconfig}")
    print(f"export PATH={cluster.bin_dir}:$PATH   # kubectl and helm of the cluster's version")
    print(f"Prometheus: {cluster.prometheus_url}")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    _cluster(args).down()
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    for name, state in cluster.status():
        print(f"{name:<26}{state}")
    if not cluster.healthy():
        print("\nThe local cluster is not (fully) up: run `breaker cluster up`.")
        return 1
    print()
    _print_nodes(cluster)
    print(f"\nKUBECONFIG={cluster.kubeconfig}\nPrometheus: {cluster.prometheus_url}")
    return 0


def _cluster_build(args: argparse.Namespace) -> int:
    from breaker_tooling.localcluster.tools import ensure_built

    toolbox = ensure_built()
    for name, path in sorted(toolbox.binaries.items()):
        print(f"{name:<26}{path}")
    return 0


def _print_nodes(cluster: LocalCluster) -> None:
    nodes = cluster.gpu_nodes()
    rows = [("NODE", "READY", "GPUS", "CPU", "MEMORY", "GPU MODEL")]
    total = 0
    for node in nodes:
        allocatable: dict[str, str] = node["status"].get("allocatable", {})
        gpus = allocatable.get(GPU_RESOURCE, "0")
        total += int(gpus)
        rows.append(
            (
                node["metadata"]["name"],
                "True" if node_ready(node) else "False",
                gpus,
                allocatable.get("cpu", "?"),
                allocatable.get("memory", "?"),
                node["metadata"].get("labels", {}).get("nvidia.com/gpu.product", ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print(f"{len(nodes)} GPU nodes, {total} {GPU_RESOURCE} allocatable in all")


def _crds(args: argparse.Namespace) -> int:
    from breaker.api import crd
    from breaker_tooling.localcluster.paths import repo_root

    directories = [Path(d) for d in args.directory] or [repo_root() / d for d in crd.DIRECTORIES]
    if args.check:
        stale = [path for directory in directories for path in crd.stale(directory)]
        for path in stale:
            print(f"{path} differs from the models: run `breaker crds`", file=sys.stderr)
        return 1 if stale else 0
    for directory in directories:
        for path in crd.write_all(directory):
            print(f"wrote {path}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from breaker_tooling import demo

    return demo.run(keep=args.keep)


def _sim(args: argparse.Namespace) -> int:
    from breaker_tooling.sim import openmetrics
    from breaker_tooling.sim.scenario import ScenarioError, load

    try:
        scenario = load(Path(args.scenario))
    except ScenarioError as error:
        print(f"breaker sim: {error}", file=sys.stderr)
        return 2
    if args.write:
        try:
            start = parse_time(args.start, "--start") if args.start else None
        except ValueError as error:
            print(f"breaker sim: {error}", file=sys.stderr)
            return 2
        count = openmetrics.write_file(scenario, Path(args.write), start)
        print(f"wrote {count} samples of {len(scenario.pods)} pods to {args.write}")
        return 0
    return _serve(scenario, args)


def _serve(scenario: Any, args: argparse.Namespace) -> int:
    import time

    from prometheus_client import CollectorRegistry, start_http_server

    from breaker_tooling.sim.exporter import ScenarioCollector

    registry = CollectorRegistry()
    registry.register(ScenarioCollector(scenario, speed=args.speed))
    server, thread = start_http_server(args.port, addr=args.address, registry=registry)
    address = f"{args.address}:{server.server_port}"
    from breaker_tooling.localcluster import LocalCluster

    cluster = LocalCluster() if args.register else None
    if cluster is not None:
        cluster.targets.add(f"sim-{scenario.name}", [address])
    print(
        f"serving {scenario.name} ({len(scenario.pods)} pods) on http://{address}/metrics",
        flush=True,
    )
    try:
        while thread.is_alive():
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        if cluster is not None:
            cluster.targets.remove(f"sim-{scenario.name}")
        server.shutdown()
    return 0


def _add_demo(commands: Commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="replay the ROME incident on the local cluster: contained, then reset",
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave the cluster, operator and simulator running"
    )
    demo.set_defaults(handler=_reporting(_demo))


def _add_sim(commands: Commands) -> None:
    sim = commands.add_parser(
        "sim", help="export DCGM-, cAdvisor-, Hubble- and Falco-shaped series from a scenario"
    )
    sim.add_argument("scenario", help="the scenario file (see breaker_tooling/sim/scenario.py)")
    sim.add_argument("--write", metavar="FILE.om", help="write OpenMetrics with timestamps instead")
    sim.add_argument(
        "--start", help="with --write: the first sample's time (default: now - duration)"
    )
    sim.add_argument("--port", type=int, default=9400, help="port to serve on (default 9400)")
    sim.add_argument(
        "--address", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    sim.add_argument(
        "--speed", type=float, default=1.0, help="play the timeline this many times faster"
    )
    sim.add_argument(
        "--register",
        action="store_true",
        help="add this exporter to the local cluster's Prometheus",
    )
    sim.set_defaults(handler=_reporting(_sim))


def _add_crds(commands: Commands) -> None:
    crds = commands.add_parser(
        "crds", help="write the CustomResourceDefinitions generated from the API models"
    )
    crds.add_argument(
        "directory",
        nargs="*",
        help="where to write (default: crds/ and the chart's helm/breaker/crds/)",
    )
    crds.add_argument("--check", action="store_true", help="only report files that are stale")
    crds.set_defaults(handler=_crds)


def _add_cluster(commands: Commands) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="the local control plane (API server, controllers, kwok GPU nodes) and Prometheus",
        description=(
            "A real Kubernetes control plane and Prometheus on loopback, for development and "
            "tests. The first `up` builds the control plane from Go modules (many minutes)."
        ),
    )
    actions = cluster.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="build if needed, start everything, print the GPU nodes")
    up.add_argument("--nodes", type=_positive, default=GpuNodes.count, help="GPU nodes (default 4)")
    up.add_argument(
        "--gpus-per-node",
        type=_positive,
        default=GpuNodes.gpus,
        help="nvidia.com/gpu per node (default 8)",
    )
    up.set_defaults(handler=_reporting(_cluster_up))
    actions.add_parser("down", help="stop everything and remove the cluster's state").set_defaults(
        handler=_reporting(_cluster_down)
    )
    actions.add_parser("status", help="what runs, and the GPU nodes").set_defaults(
        handler=_reporting(_cluster_status)
    )
    actions.add_parser("build", help="build the Go binaries into the cache only").set_defaults(
        handler=_reporting(_cluster_build)
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value
