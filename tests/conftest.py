"""Shared fixtures: the real local cluster and Prometheus, once per run, and a namespace per test.

The session fixture reuses a cluster that is already up (and leaves it up); one it had to
start itself it takes down again at the end, unless BREAKER_KEEP_CLUSTER=1.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from prometheus_api_client import PrometheusConnect

from breaker.api.crd import RESOURCES
from breaker_tooling.localcluster import LocalCluster, pki
from breaker_tooling.localcluster.paths import repo_root
from breaker_tooling.localcluster.realnode import NAME as REAL_NODE
from tests.helpers import wait_for
from tests.kube import as_body


@pytest.fixture(scope="session")
def local_cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    cluster = LocalCluster()
    was_up = cluster.healthy()
    # A cold first run builds for many minutes: show its progress, not a silent pytest.
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print()
        cluster.up()
    yield cluster
    if not was_up and os.environ.get("BREAKER_KEEP_CLUSTER") != "1":
        with capture.global_and_fixture_disabled():
            cluster.down()


@pytest.fixture(scope="session")
def api_client(local_cluster: LocalCluster) -> Any:
    return local_cluster.api_client()


@pytest.fixture(scope="session")
def core(api_client: Any) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def prom(local_cluster: LocalCluster) -> PrometheusConnect:
    return PrometheusConnect(url=local_cluster.prometheus_url, disable_ssl=True)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace for one test, ready for pods, deleted afterwards."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{stem}-{uuid.uuid4().hex[:5]}"
    core.create_namespace(
        as_body({"metadata": {"name": name, "labels": {"breaker.dev/test": "true"}}})
    )
    # Pods are refused until the ServiceAccount controller has made the default account.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        f"the default ServiceAccount in {name}",
        ignore=(client.ApiException,),
    )
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except client.ApiException as error:
        if error.status != 404:  # a test that deleted it itself
            raise


@pytest.fixture(scope="session")
def crds(local_cluster: LocalCluster) -> None:
    """The committed CRDs, installed the way an admin would, and established."""
    subprocess.run(
        ["kubectl", "apply", "--server-side", "--force-conflicts", "-f", str(repo_root() / "crds")],
        env=local_cluster.env(),
        check=True,
        capture_output=True,
    )
    # Read through the API, not `kubectl wait`: a CI run once failed that wait with nothing
    # to say why (its output was captured, and lost). This names what is missing.
    extensions = client.ApiextensionsV1Api(local_cluster.api_client())

    def established() -> list[str]:
        missing = []
        for resource in RESOURCES:
            found = extensions.read_custom_resource_definition(resource.name)
            conditions = (found.status and found.status.conditions) or []
            if not any(c.type == "Established" and c.status == "True" for c in conditions):
                missing.append(f"{resource.name}: {[(c.type, c.status) for c in conditions]}")
        return missing

    try:
        wait_for(
            lambda: not established(), "the CRDs Established", 120, ignore=(client.ApiException,)
        )
    except AssertionError as error:
        raise AssertionError(f"{error}; not Established: {established()}") from None


OPERATOR_METRICS: list[str] = []  # the running operator's /metrics URL

# The chart as the tests install it: the operator runs as a process here (replicas 0),
# authenticated as the chart's ServiceAccount, so it has exactly the chart's RBAC.
RELEASE, RELEASE_NAMESPACE, SERVICE_ACCOUNT = "breaker", "breaker-system", "breaker"
PEERING = "breaker"
PEERING_LIFETIME = 5  # seconds; the chart's default is 15


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, as Kubernetes stops a pod; SIGKILL if it has not gone after 20 s."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def install_chart(local_cluster: LocalCluster, chart_dir: Path, *values: str) -> None:
    """`helm upgrade --install` of a breaker chart, as an admin would, minus the pod;
    ``values`` are more `--set`s."""
    done = subprocess.run(
        [
            "helm",
            "upgrade",
            "--install",
            RELEASE,
            str(chart_dir),
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--set",
            "replicas=0",
            "--set",
            f"prometheus.url={local_cluster.prometheus_url}",
            "--set",
            # Tests count their own breakers: no default policy guarding every namespace.
            "defaultPolicy.enabled=false",
            "--set",
            f"peering.name={PEERING}",
            # The node agent's ServiceAccount and RBAC; its DaemonSet's pods would need the
            # operator image, so they are placed nowhere and the agent runs as a process.
            "--set",
            "nodeAgent.enabled=true",
            "--set-json",
            'nodeAgent.nodeSelector={"breaker.dev/nowhere":"true"}',
            *_controllers(chart_dir),
            *(arg for value in values for arg in ("--set", value)),
            "--wait",
            "--timeout",
            "2m",
        ],
        env=local_cluster.env(),
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"helm upgrade --install {chart_dir}: {done.stderr}"


def _controllers(chart_dir: Path) -> list[str]:
    """The local cluster's controllers outside kube-system, for a chart that takes them:
    they delete the pods of a job Kueue evicts or a RayCluster KubeRay suspends, held pods
    included (an earlier release's chart, which the upgrade test installs, does not)."""
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    takes = schema["properties"].get("admissionPolicy", {}).get("properties", {})
    if "controllers" not in takes:
        return []
    return [
        "--set-json",
        f"admissionPolicy.controllers={json.dumps([pki.KUEUE.user, pki.KUBERAY.user])}",
    ]


@pytest.fixture(scope="session")
def chart(local_cluster: LocalCluster, crds: None) -> None:
    """This chart (helm/breaker), installed."""
    install_chart(local_cluster, repo_root() / "helm" / "breaker")


def service_account_kubeconfig(
    cluster: LocalCluster, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates with a token of the ServiceAccount, nothing else."""
    token = subprocess.run(
        ["kubectl", "create", "token", account, "-n", namespace, "--duration", "6h"],
        env=cluster.env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    user = f"system:serviceaccount:{namespace}:{account}"
    config["users"] = [{"name": user, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = user
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def operator_kubeconfig(
    local_cluster: LocalCluster, chart: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("operator-sa") / "kubeconfig"
    return service_account_kubeconfig(local_cluster, RELEASE_NAMESPACE, SERVICE_ACCOUNT, path)


class Operator:
    """`breaker run` as a process of its own, authenticated as the chart's ServiceAccount.

    Tests that crash it (SIGKILL, failpoints) or run a second one for peering restart it
    through this; every start appends to the same log, which must show no RBAC refusal."""

    def __init__(
        self,
        cluster: LocalCluster,
        kubeconfig: Path,
        log: Path,
        peering: str = "",
        args: Sequence[str] = (),
    ) -> None:
        self.cluster, self.kubeconfig, self.log = cluster, kubeconfig, log
        self.peering = peering or PEERING
        self.args = list(args)  # e.g. a shard's --serve, --shard, --shard-namespaces
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "breaker.cli",
                    "run",
                    "--liveness",
                    f"http://127.0.0.1:{self.port}/healthz",
                    "--prometheus-url",
                    self.cluster.prometheus_url,
                    "--metrics-port",
                    str(self.metrics_port),
                    "--namespace",
                    RELEASE_NAMESPACE,
                    "--peering",
                    self.peering,
                    # Short, so a crash test's restart waits out a killed peer quickly.
                    "--peering-lifetime",
                    str(PEERING_LIFETIME),
                    *self.args,
                ],
                env={
                    **self.cluster.env(),
                    "KUBECONFIG": str(self.kubeconfig),
                    **(env or {}),
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_live()

    def wait_live(self) -> None:
        def live() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the operator exited:\n{self.log.read_text()[-3000:]}")
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)

        wait_for(live, "the operator's liveness endpoint", timeout=60, ignore=(OSError,))

    def stop(self) -> None:
        """SIGTERM, as Kubernetes stops a pod; SIGKILL if it does not go."""
        terminate(self.process)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last write, as an OOM kill or a lost node ends it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def note(self, line: str) -> None:
        """Write a line of the test's own into the operator's log (both append)."""
        with self.log.open("a") as out:
            out.write(f"{line}\n")

    def dead(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's series on this operator's /metrics (those with ``labels``)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if (line.startswith((f"{name} ", f"{name}{{")))
            and all(label in line for label in wanted)
        )

    def evaluations(self, policy: str | None = None) -> float:
        """Evaluations run (of one policy, "namespace/name", or of all)."""
        labels = {"policy": policy} if policy else {}
        return self.metric("breaker_evaluation_duration_seconds_count", **labels)

    def wait_evaluations(self, count: int, policy: str | None = None, timeout: float = 60) -> None:
        """Wait until ``count`` more evaluations have run: what a test that checks that
        nothing happens waits for, instead of a fixed time."""
        target = self.evaluations(policy) + count
        wait_for(
            lambda: self.evaluations(policy) >= target,
            f"{count} more evaluations of {policy or 'every policy'}",
            timeout=timeout,
            ignore=(OSError,),
        )

    def restart(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.stop()
        self.start(env, wait)


@pytest.fixture(scope="session")
def operator_process(
    local_cluster: LocalCluster, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Operator]:
    """The operator with the chart's RBAC. At the end, its log must show no request the
    RBAC refused."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    running = Operator(local_cluster, operator_kubeconfig, log)
    running.start()
    OPERATOR_METRICS.append(f"http://127.0.0.1:{running.metrics_port}/metrics")
    yield running
    running.stop()
    denied = refusals(log.read_text())
    assert not denied, "the chart's RBAC refused the operator:\n" + "\n".join(denied[:20])


@pytest.fixture
def operator(operator_process: Operator) -> Path:
    """The running operator (started again if a test left it stopped); yields its log."""
    if operator_process.dead():
        operator_process.start()
    return operator_process.log


# The API server's words for an RBAC refusal (403s for a namespace being deleted are not).
FORBIDDEN = re.compile(r'forbidden: User "[^"]+" cannot')
# Between these lines a test restarted the API server, whose RBAC cache refuses everyone
# until it has filled.
FORGIVEN_START = "--- test: API server restarting ---"
FORGIVEN_END = "--- test: API server restarted ---"


def refusals(log: str) -> list[str]:
    """The RBAC refusals in an operator's log, outside API server restarts."""
    found, forgiven = [], False
    for line in log.splitlines():
        if line in (FORGIVEN_START, FORGIVEN_END):
            forgiven = line == FORGIVEN_START
        elif not forgiven and FORBIDDEN.search(line):
            found.append(line)
    return found


NODE_AGENT_ACCOUNT = "breaker-node-agent"


class NodeAgent:
    """`breaker node-agent` for the real node, in its network namespace, authenticated as
    the chart's node-agent ServiceAccount (exactly its RBAC); the local Prometheus scrapes
    its per-pod flow metrics."""

    METRICS_PORT = 9102  # on the node's own address, as the chart's DaemonSet serves it

    def __init__(self, cluster: LocalCluster, kubeconfig: Path, log: Path) -> None:
        self.cluster, self.kubeconfig, self.log = cluster, kubeconfig, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.cluster.real_node.agent_command(self.METRICS_PORT),
                env={**self.cluster.env(), "KUBECONFIG": str(self.kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        lease = f"breaker-node-agent-{REAL_NODE}"
        coordination = client.CoordinationV1Api(self.cluster.api_client())

        def renewed() -> bool:
            if self.dead():
                raise AssertionError(f"the node agent exited:\n{self.log.read_text()[-3000:]}")
            found = coordination.read_namespaced_lease(lease, RELEASE_NAMESPACE)
            return bool(found.spec and found.spec.renew_time)

        wait_for(renewed, "the node agent's Lease", timeout=60, ignore=(client.ApiException,))
        target = self.cluster.real_node.metrics_target(self.METRICS_PORT)
        self.cluster.targets.add("node-agent", [target])

    def stop(self) -> None:
        """SIGTERM, and its Lease goes (without it the operator says: may survive)."""
        terminate(self.process)
        with contextlib.suppress(client.ApiException):
            client.CoordinationV1Api(self.cluster.api_client()).delete_namespaced_lease(
                f"breaker-node-agent-{REAL_NODE}", RELEASE_NAMESPACE
            )

    def dead(self) -> bool:
        return self.process is None or self.process.poll() is not None


@pytest.fixture(scope="session")
def node_agent_process(
    local_cluster: LocalCluster, chart: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeAgent]:
    base = tmp_path_factory.mktemp("node-agent")
    kubeconfig = service_account_kubeconfig(
        local_cluster, RELEASE_NAMESPACE, NODE_AGENT_ACCOUNT, base / "kubeconfig"
    )
    agent = NodeAgent(local_cluster, kubeconfig, base / "node-agent.log")
    agent.start()
    yield agent
    agent.stop()
    denied = refusals(agent.log.read_text())
    assert not denied, "the chart's RBAC refused the node agent:\n" + "\n".join(denied[:20])


@pytest.fixture
def node_agent(node_agent_process: NodeAgent) -> NodeAgent:
    """The node agent running (started again if a test stopped it)."""
    if node_agent_process.dead():
        node_agent_process.start()
    return node_agent_process


@pytest.fixture(scope="session")
def custom(api_client: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Figures of the runs that happened: detection latencies, faults, takeovers, escapes."""
    _report_containment(terminalreporter)
    _report_faults(terminalreporter)
    _report_latencies(terminalreporter)


def _report_containment(terminalreporter: pytest.TerminalReporter) -> None:
    """Cuts on the real node, the demo, crash runs and the generated specs."""
    from tests.cluster.test_bad_input import OUTCOMES
    from tests.cluster.test_crash_consistency import CRASHES
    from tests.cluster.test_demo import DEMO_RUNS
    from tests.cluster.test_hostile_tenant_node import ENDED
    from tests.cluster.test_live_tunnel import CUTS

    if CUTS:
        terminalreporter.section("open connections cut on the real node (node agent)")
        for mode, took in CUTS:
            terminalreporter.write_line(
                f"{mode}: the tunnel's far end got its reset {took:.3f}s after the trip"
            )
    if ENDED:
        terminalreporter.section("streams and sessions into held pods, ended (real node)")
        for what, took in ENDED:
            terminalreporter.write_line(f"{what}: ended {took:.3f}s after the trip")
    for took, timeline in DEMO_RUNS:
        terminalreporter.section(f"breaker demo: exit 0 in {took:.0f}s, cluster start included")
        terminalreporter.write_line(timeline.strip("\n"))
    if CRASHES:
        terminalreporter.section("operator killed mid-action (SIGKILL at a failpoint)")
        for setting, run, phase, point, outcome in CRASHES:
            terminalreporter.write_line(f"{setting} run {run}: {phase} at {point}: {outcome}")
        converged = sum(1 for *_, outcome in CRASHES if outcome == "converged")
        terminalreporter.write_line(
            f"{len(CRASHES)} runs, {converged} converged with every action applied once; "
            f"inconsistent end states: {len(CRASHES) - converged}"
        )
    if OUTCOMES:
        terminalreporter.section("generated specs (hypothesis) against the API server")
        for plural, (accepted, refused) in sorted(OUTCOMES.items()):
            terminalreporter.write_line(
                f"{plural}: {accepted} accepted and handled, {refused} refused naming the field"
            )


def _report_faults(terminalreporter: pytest.TerminalReporter) -> None:
    """Faults outside the operator, takeovers, and a tripped tenant's attempts to get out."""
    from tests.cluster.tenant import ATTEMPTS
    from tests.cluster.test_faults import FAULTS
    from tests.cluster.test_high_availability import TAKEOVERS

    if FAULTS:
        terminalreporter.section("faults outside the operator")
        for fault, said in FAULTS:
            terminalreporter.write_line(f"{fault}: {said}")
    if TAKEOVERS:
        terminalreporter.section("high availability")
        for took in TAKEOVERS:
            terminalreporter.write_line(f"standby took over and acted {took:.1f}s after SIGKILL")

    if ATTEMPTS:
        terminalreporter.section("a tripped tenant's attempts to get out")
        for what, outcome, seconds in ATTEMPTS:
            after = f" in {seconds:.3f}s" if seconds is not None else ""
            terminalreporter.write_line(f"{what}: {outcome}{after}")


def _report_latencies(terminalreporter: pytest.TerminalReporter) -> None:
    """The corpus's detection latencies, as a table."""
    from tests.detect.test_corpus import LATENCIES

    if not LATENCIES:
        return
    rows = [("scenario", "pod", "rule", "latency", "budget"), *sorted(LATENCIES)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    terminalreporter.section("detection latency (default policy, from the first bad sample)")
    for row in rows:
        terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
