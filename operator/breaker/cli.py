"""The `breaker` and `kubectl-breaker` command lines.

`breaker` runs the operator (`run`, `node-agent`) and checks policies offline (`backtest`,
`queries`); in a clone it also runs the developer tooling (`cluster`, `demo`, `sim`,
`crds`), which the operator's image does not install. `kubectl-breaker` is the kubectl
plugin admins use on a live cluster. Both print errors as one clear message and exit
non-zero, never with a traceback for a failure the user can act on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from breaker.nodeagent import accounting

# The developer tooling's commands: present in a clone (`make deps` installs ./tooling),
# absent from the operator's image, where each says how to get it.
TOOLING = ("cluster", "demo", "sim", "crds")


def _run(args: argparse.Namespace) -> int:
    from breaker import runner
    from breaker.serving import Serving, ServingError

    try:
        serving = Serving.of(_parts(args.serve), args.shard_namespaces or [], args.shard)
    except ServingError as error:
        print(f"breaker run: {error}", file=sys.stderr)
        return 2
    runner.run(
        liveness=args.liveness,
        verbose=args.verbose,
        prometheus_url=args.prometheus_url,
        metrics_port=args.metrics_port or None,
        metrics_address=args.metrics_address,
        operator_namespace=args.namespace,
        peering=args.peering,
        peering_lifetime=args.peering_lifetime,
        serving=serving,
    )
    return 0


def _node_agent(args: argparse.Namespace) -> int:
    import logging
    import signal

    import prometheus_client
    from kubernetes import client, config

    from breaker.nodeagent.agent import NodeAgent, Settings

    if not args.node:
        print(
            "breaker node-agent: give --node (or $NODE_NAME): the node it runs on", file=sys.stderr
        )
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    settings = Settings(
        node=args.node,
        namespace=args.namespace,
        cluster_dns=tuple(args.cluster_dns or ["10.96.0.10"]),
        netns_dir=Path(args.netns_dir),
        cni_cache_dir=Path(args.cni_cache_dir),
        interval=args.interval,
        iptables=args.iptables,
        flow_interval=args.flow_interval,
        cluster_cidrs=tuple(args.cluster_cidrs.split(",")),
        account_bytes=args.flow_bytes,
    )
    # per-pod series: twice as many with *_created
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    agent = NodeAgent(client.ApiClient(), settings)
    if args.metrics_port:
        agent.serve(args.metrics_address, args.metrics_port)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    try:
        agent.run()
    except KeyboardInterrupt:
        agent.stop()
    return 0


def _cidrs(text: str) -> str:
    """--cluster-cidrs: checked when parsed, so a typo is named before the agent starts."""
    import ipaddress

    for part in _parts(text):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not an address range such as 10.0.0.0/8"
            ) from None
    return ",".join(_parts(text))


def _parts(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_time(text: str, flag: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{flag} {text!r} is not an RFC 3339 time such as 2026-01-01T00:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _queries(args: argparse.Namespace) -> int:
    from breaker.detect import engine
    from breaker.detect.policy_file import PolicyFileError, load
    from breaker.detect.promql import scoped

    try:
        detector = engine.compile_policy(load(Path(args.policy) if args.policy else None))
    except (ValueError, PolicyFileError) as error:
        print(f"breaker queries: {error}", file=sys.stderr)
        return 2
    pods = [p.partition("/") for p in args.pod or []]
    namespaces = {namespace for namespace, _, _ in pods}
    if pods and (len(namespaces) != 1 or not all(name for _, _, name in pods)):
        print(
            "breaker queries: --pod takes NAMESPACE/POD, every pod in one namespace",
            file=sys.stderr,
        )
        return 2
    for spec in detector.signals:
        query = spec.query
        if pods and spec.scope == "pod":
            query = scoped(query, spec.labels, pods[0][0], [name for _, _, name in pods])
        fires = f"{spec.operator} {spec.threshold:g}, for {spec.for_seconds:g}s"
        print(f"# {spec.name} ({spec.scope}; fires when {fires})\n{query}\n")
    return 0


def _backtest(args: argparse.Namespace) -> int:
    from breaker.api.common import parse_duration
    from breaker.detect import backtest, engine
    from breaker.detect.policy_file import PolicyFileError, load
    from breaker.detect.prom import Prom, QueryError

    def fail(message: str) -> int:
        print(f"breaker backtest: {message}", file=sys.stderr)
        return 2

    try:
        step = parse_duration(args.step).total_seconds()
        detector = engine.compile_policy(load(Path(args.policy) if args.policy else None))
    except (ValueError, PolicyFileError) as error:
        return fail(str(error))
    try:
        if args.prometheus:
            if not (args.from_ and args.to):
                return fail("--prometheus needs --from and --to")
            start, end = (
                parse_time(args.from_, "--from").timestamp(),
                parse_time(args.to, "--to").timestamp(),
            )
            report = backtest.evaluate(detector, Prom(args.prometheus, 60), start, end, step)
        elif args.series:
            report = backtest.run_file(detector, Path(args.series), step)
        else:
            return fail("give --series FILE.om, or --prometheus URL --from T --to T")
    except (backtest.BacktestError, ValueError) as error:
        return fail(str(error))
    except QueryError as error:
        return fail(f"Prometheus refused a query: {error}")
    except KeyboardInterrupt:
        return 130
    if args.format == "json":
        print(json.dumps(report.wire(), indent=2))
    else:
        print(backtest.render_text(report))
    return 0


if TYPE_CHECKING:
    # What add_subparsers returns: argparse names no public type for it.
    Commands = argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="breaker",
        description="A circuit breaker for GPU training jobs run by autonomous agents.",
    )
    parser.add_argument(
        "--version", action="version", version=f"breaker {package_version('breaker')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(commands)
    _add_agent(commands)
    _add_backtest(commands)
    _add_queries(commands)
    _add_tooling(commands)
    return parser


def _add_tooling(commands: Commands) -> None:
    try:
        from breaker_tooling.commands import add_commands
    except ModuleNotFoundError as error:
        if error.name not in ("breaker_tooling", "breaker_tooling.commands"):
            raise  # installed, and broken: say so
        for command in TOOLING:
            absent = commands.add_parser(command, help="(developer tooling: not installed here)")
            absent.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            absent.set_defaults(handler=_tooling_absent)
        return
    add_commands(commands)


def _tooling_absent(args: argparse.Namespace) -> int:
    print(
        f"breaker {args.command}: the developer tooling is not installed here (the operator's "
        "image leaves it out). From a clone of the repository: `make deps`, or "
        "`pip install -e . -e ./tooling`.",
        file=sys.stderr,
    )
    return 2


def _add_run(commands: Commands) -> None:
    run = commands.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument(
        "--liveness",
        default="http://127.0.0.1:8080/healthz",
        help="kopf's liveness endpoint (default http://127.0.0.1:8080/healthz)",
    )
    run.add_argument(
        "--prometheus-url",
        default=os.environ.get("BREAKER_PROMETHEUS_URL", "http://127.0.0.1:9090"),
        help="Prometheus for policies that name none ($BREAKER_PROMETHEUS_URL; "
        "default http://127.0.0.1:9090)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("BREAKER_METRICS_PORT", "8081")),
        help="serve the operator's metrics on ADDRESS:PORT/metrics (0: off; default 8081)",
    )
    run.add_argument(
        "--metrics-address",
        default=os.environ.get("BREAKER_METRICS_ADDRESS", "127.0.0.1"),
        help="address the metrics server binds (default 127.0.0.1; 0.0.0.0 in a pod)",
    )
    run.add_argument(
        "--peering",
        metavar="NAME",
        default=os.environ.get("BREAKER_PEERING") or None,
        help="kopf peering: the ClusterKopfPeering to coordinate through (the chart makes it); "
        "without it the operator runs standalone",
    )
    run.add_argument(
        "--peering-lifetime",
        metavar="SECONDS",
        type=int,
        default=int(os.environ.get("BREAKER_PEERING_LIFETIME", "15")),
        help="with --peering: how long a silent operator is still taken as alive, which "
        "bounds a standby's takeover after the active one dies (default 15)",
    )
    run.add_argument(
        "--namespace",
        default=os.environ.get("BREAKER_NAMESPACE", "breaker-system"),
        help="the operator's own namespace: where webhook Secrets of cluster policies live",
    )
    run.add_argument(
        "--serve",
        metavar="PARTS",
        default=os.environ.get("BREAKER_SERVE", "breakers,queue"),
        help="what this operator runs: breakers, queue, or both (default breakers,queue); "
        "with shards, one operator runs the queue and each shard the breakers",
    )
    run.add_argument(
        "--shard",
        metavar="NAME",
        default=os.environ.get("BREAKER_SHARD") or None,
        help="this operator's shard: it serves only --shard-namespaces, and counts its "
        "breakers under the name in each ClusterBreakerPolicy's status.shards",
    )
    run.add_argument(
        "--shard-namespaces",
        metavar="PATTERN",
        action="append",
        help="with --shard: namespaces served; repeat for more. Each is a name or a kopf "
        "pattern: a glob, then `,!glob` to exclude ('*,!team-a-*' is all but team a's). "
        "Names only: one watch per namespace; any glob: one cluster-wide watch, filtered",
    )
    run.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    run.set_defaults(handler=_run)


def _add_agent(commands: Commands) -> None:
    agent = commands.add_parser(
        "node-agent",
        help="on a node: cut the open connections of its quarantined pods (the DaemonSet)",
    )
    agent.add_argument(
        "--node",
        default=os.environ.get("NODE_NAME"),
        help="the node it runs on ($NODE_NAME; the DaemonSet sets it from spec.nodeName)",
    )
    agent.add_argument(
        "--namespace",
        default=os.environ.get("BREAKER_NAMESPACE", "breaker-system"),
        help="the operator's namespace, where the agent's Lease tells it is running",
    )
    agent.add_argument(
        "--cluster-dns",
        action="append",
        default=None,
        metavar="IP",
        help="the cluster DNS service's address (the kubelet's clusterDNS), kept open when a "
        "policy allows DNS; repeatable (default 10.96.0.10)",
    )
    agent.add_argument(
        "--netns-dir",
        default="/var/run/netns",
        help="where the container runtime keeps pods' network namespaces (/var/run/netns)",
    )
    agent.add_argument(
        "--cni-cache-dir",
        default="/var/lib/cni/results",
        help="libcni's record of the pods' networks, where a pod's address is read before "
        "the API server has it: a pod born quarantined is fenced as it starts "
        "(/var/lib/cni/results)",
    )
    agent.add_argument(
        "--interval",
        type=float,
        default=0.25,
        help="seconds between passes while a pod of the node is quarantined (0.25)",
    )
    agent.add_argument(
        "--iptables",
        default="iptables",
        help="the iptables command whose backend the node uses (iptables, iptables-legacy)",
    )
    agent.add_argument(
        "--flow-interval",
        type=float,
        default=10.0,
        help="seconds between listings of the node's conntrack table for the pods' byte "
        "counts, unanswered flows and SYN counters (10; 0: no flow counting at all)",
    )
    agent.add_argument(
        "--cluster-cidrs",
        type=_cidrs,
        default=",".join(accounting.CLUSTER_CIDRS),
        help="addresses that are not the world: pods, Services, nodes "
        "(default: the private, CGNAT, loopback and link-local ranges)",
    )
    agent.add_argument(
        "--no-flow-bytes",
        dest="flow_bytes",
        action="store_false",
        help="leave the node's nf_conntrack_acct as it is (no byte counts if it is off)",
    )
    agent.add_argument(
        "--metrics-port", type=int, default=0, help="serve /metrics and /healthz (0: off)"
    )
    agent.add_argument("--metrics-address", default="127.0.0.1", help="(default 127.0.0.1)")
    agent.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    agent.set_defaults(handler=_node_agent)


def _add_backtest(commands: Commands) -> None:
    backtest = commands.add_parser(
        "backtest", help="when and why a policy would have tripped, on recorded series"
    )
    backtest.add_argument(
        "--policy", help="a BreakerPolicy or ClusterBreakerPolicy file (default: built-in)"
    )
    backtest.add_argument("--series", metavar="FILE.om", help="OpenMetrics with timestamps")
    backtest.add_argument("--step", default="15s", help="evaluation interval (default 15s)")
    backtest.add_argument("--format", choices=("text", "json"), default="text")
    backtest.add_argument("--prometheus", metavar="URL", help="evaluate against a live Prometheus")
    backtest.add_argument(
        "--from", dest="from_", metavar="T", help="with --prometheus: start (RFC 3339)"
    )
    backtest.add_argument("--to", metavar="T", help="with --prometheus: end (RFC 3339)")
    backtest.set_defaults(handler=_backtest)


def _add_queries(commands: Commands) -> None:
    queries = commands.add_parser(
        "queries",
        help="the PromQL each signal of a policy sends, for all pods or narrowed to one",
    )
    queries.add_argument(
        "--policy", help="a BreakerPolicy or ClusterBreakerPolicy file (default: built-in)"
    )
    queries.add_argument(
        "--pod",
        metavar="NAMESPACE/POD",
        action="append",
        help="narrow each query to this pod (repeat for a job's pods), to paste into Prometheus",
    )
    queries.set_defaults(handler=_queries)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Ctrl-C and SIGTERM end every command through its cleanup (a simulator takes its
    # scrape target back), also when started from a script that runs it in the
    # background: the shell then ignores SIGINT for it, and Python would leave it so.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code: int = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return code


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """`kubectl breaker`: the admin's plugin (see breaker/plugin.py)."""
    from breaker import plugin

    return plugin.main(argv)


if __name__ == "__main__":
    sys.exit(main())
