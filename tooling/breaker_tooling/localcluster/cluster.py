"""Bring the local control plane and Prometheus up, report on them, and take them down.

Order matters both ways: etcd, the API server, the controllers and the scheduler, then
kwok and its GPU nodes, then Prometheus and kube-state-metrics, then the real node
(``realnode.py``); down in reverse. ``up`` on a healthy cluster
does nothing; ``up`` after a half-finished one stops the leftovers and starts afresh
(etcd's data is kept, so objects survive). A failure stops everything it started and
names the component and its log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breaker.constants import GPU_RESOURCE
from breaker_tooling.localcluster import paths, pki, prometheus, thanos
from breaker_tooling.localcluster.errors import ClusterError
from breaker_tooling.localcluster.kuberay import KubeRay
from breaker_tooling.localcluster.kueue import Kueue, KueuePorts, install_crds
from breaker_tooling.localcluster.nodes import NODE_LABEL, GpuNodes, node_ready
from breaker_tooling.localcluster.processes import Process, port_is_free
from breaker_tooling.localcluster.realnode import RealNode
from breaker_tooling.localcluster.tools import Toolbox, ensure_built

log = logging.getLogger(__name__)
SERVICE_RANGE = "10.96.0.0/16"


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the local cluster; ``BREAKER_CLUSTER_PORT_OFFSET`` moves them all.

    No two end in the same three digits: clusters offset by whole thousands (the demo's
    test runs one 2,000 above the session's) never ask for each other's ports.
    """

    etcd: int = 22379
    etcd_peer: int = 22380
    apiserver: int = 26443
    controller_manager: int = 20257
    scheduler: int = 20259
    kwok: int = 20247
    prometheus: int = 29090
    kube_state_metrics: int = 28080
    kube_state_metrics_telemetry: int = 28081
    kueue_webhook: int = 29444
    kueue_metrics: int = 28445
    kueue_health: int = 28082
    ray_dashboard: int = 28265
    ray_operator_health: int = 28083
    # The distributed Prometheus: a second replica, a Thanos sidecar beside each, a querier.
    prometheus_b: int = 29091
    thanos_sidecar_a_grpc: int = 20901
    thanos_sidecar_a_http: int = 20902
    thanos_sidecar_b_grpc: int = 20903
    thanos_sidecar_b_http: int = 20904
    thanos_query: int = 20905
    thanos_query_grpc: int = 20906

    @classmethod
    def from_env(cls) -> Ports:
        raw = os.environ.get("BREAKER_CLUSTER_PORT_OFFSET", "0")
        try:
            offset = int(raw)
        except ValueError:
            raise ClusterError(
                "config", f"BREAKER_CLUSTER_PORT_OFFSET={raw!r} is not a whole number"
            ) from None
        defaults = cls()
        ports = cls(**{name: port + offset for name, port in defaults.__dict__.items()})
        first, last = ephemeral_range()
        name, highest = max(ports.__dict__.items(), key=lambda item: item[1])
        if highest >= first:
            # The kernel picks outgoing connections' local ports there: one (or its
            # TIME_WAIT) can hold a server's port when it starts.
            raise ClusterError(
                "config",
                f"BREAKER_CLUSTER_PORT_OFFSET={offset} puts {name} on port {highest}, in the "
                f"kernel's ephemeral range ({first}-{last}), where an outgoing connection "
                f"may hold it: use an offset below {first - max(defaults.__dict__.values())}",
            )
        return ports


def ephemeral_range(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> tuple[int, int]:
    """The local ports the kernel gives outgoing connections (Linux's default if unread)."""
    try:
        first, last = (int(part) for part in path.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return first, last


@dataclass
class LocalCluster:
    """The local cluster in one state directory."""

    directory: Path = field(default_factory=paths.state_dir)
    ports: Ports = field(default_factory=Ports.from_env)
    nodes: GpuNodes = field(default_factory=GpuNodes)
    say: Callable[[str], None] = field(default=lambda message: print(message, flush=True))
    # The real node (kubelet, containerd, a NetworkPolicy dataplane) beside the kwok ones;
    # BREAKER_CLUSTER_REAL_NODE=0 leaves it out (the fleet benchmarks need only kwok).
    with_real_node: bool = field(
        default_factory=lambda: os.environ.get("BREAKER_CLUSTER_REAL_NODE", "1") != "0"
    )
    # More flags for the API server (restart_apiserver sets them; a start has none).
    apiserver_flags: tuple[str, ...] = ()

    # -- where things are ---------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}"

    @property
    def targets(self) -> prometheus.Targets:
        return prometheus.Targets(self.directory / "prometheus" / "targets")

    @property
    def kubelets(self) -> prometheus.Kubelets:
        """The real kubelets the local Prometheus scrapes cAdvisor from."""
        return prometheus.Kubelets(
            prometheus.Targets(self.directory / "prometheus" / "kubelets"),
            self.keys.client_cert(pki.PROMETHEUS),
            self.keys.client_key(pki.PROMETHEUS),
        )

    @property
    def bin_dir(self) -> Path:
        """kubectl and helm of the cluster's version, linked for PATH."""
        return self.directory / "bin"

    @property
    def keys(self) -> pki.Pki:
        return pki.Pki(self.directory / "pki")

    def process(self, name: str) -> Process:
        return Process(name, self.directory)

    @property
    def kueue(self) -> Kueue:
        ports = KueuePorts(
            self.ports.kueue_webhook, self.ports.kueue_metrics, self.ports.kueue_health
        )
        return Kueue(self.directory, ports, self.keys, self._kubeconfig_of(pki.KUEUE))

    @property
    def kuberay(self) -> KubeRay:
        return KubeRay(
            self.directory,
            self.ports.ray_dashboard,
            self.ports.ray_operator_health,
            self._kubeconfig_of(pki.KUBERAY),
        )

    @property
    def real_node(self) -> RealNode:
        return RealNode(self.directory, self.ports.apiserver, self.keys, self.say)

    def components(self) -> tuple[str, ...]:
        return self.COMPONENTS + (RealNode.COMPONENTS if self.with_real_node else ())

    COMPONENTS = (
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
        "prometheus",
        "prometheus-b",
        "thanos-sidecar-a",
        "thanos-sidecar-b",
        "thanos-query",
        "kube-state-metrics",
        "kueue",
        "ray-dashboard",
        "ray-operator",
    )

    # -- up -----------------------------------------------------------------------------

    def up(self) -> None:
        with self._lock():
            if self.healthy():
                if len(self.gpu_nodes()) != self.nodes.count:
                    self._register_nodes()
                self.say(f"The local cluster is already up; KUBECONFIG={self.kubeconfig}")
                return
            leftovers = [name for name in self.components() if self.process(name).running()]
            if leftovers:
                self.say(f"Restarting a half-running cluster (running: {', '.join(leftovers)})")
                self._stop_all()
            self._forget_last_run()
            tools = ensure_built(say=self.say)
            prometheus.binary()  # fail before starting anything if it is missing
            self._check_ports()
            try:
                self._start(tools)
            except BaseException:
                self.say("Start-up failed: stopping what was started (logs are kept)")
                self._stop_all()
                raise
            self.say(f"The local cluster is up; export KUBECONFIG={self.kubeconfig}")

    def _forget_last_run(self) -> None:
        """A cluster that did not stop cleanly (killed, the machine restarted) left its etcd
        as the last run had it half-way: cordoned nodes, a test's GPU pods, held namespaces.
        A start is always from an empty store; only the logs are kept, to read what went wrong."""
        if not (self.directory / "etcd").exists():
            return
        self.say(f"Starting afresh: {self.directory} held a cluster that did not stop cleanly")
        for child in self.directory.iterdir():
            if child.name == "logs":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def restart_apiserver(
        self, down_seconds: float = 0.0, flags: tuple[str, ...] = (), ready_within: float = 120
    ) -> None:
        """Stop the API server and start it again, as an upgrade of the control plane
        would (fault tests: every client must ride it out); with ``flags`` added, as a
        cluster configured otherwise (a feature gate off) would run it. A server holding a
        fleet (the benchmarks' 10,000 real-sized pods) needs longer than 120 s to be ready."""
        tools = ensure_built(say=lambda _: None)
        self.process("kube-apiserver").stop()
        time.sleep(down_seconds)
        self.apiserver_flags = flags
        self._step("kube-apiserver", "ready", self._start_apiserver, tools, timeout=ready_within)

    def _start(self, tools: Toolbox) -> None:
        directory = self.directory
        for sub in (
            "pki",
            "etcd",
            "prometheus/targets",
            "prometheus/kubelets",
            "certs",
            "logs",
            "pids",
        ):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        # A real node of an earlier start (left out now, or not up yet) is no target.
        self.kubelets.targets.remove(pki.REAL_NODE)
        self._link_tools(tools)
        self.keys.ensure()
        for identity in pki.IDENTITIES:
            self.keys.write_kubeconfig(identity, self.server, self._kubeconfig_of(identity))
        shutil.copyfile(self._kubeconfig_of(pki.ADMIN), self.kubeconfig)
        self.kubeconfig.chmod(0o600)

        self._step("etcd", "serving", self._start_etcd, tools, timeout=60)
        self._step("kube-apiserver", "ready", self._start_apiserver, tools, timeout=120)
        self._step("kube-controller-manager", "healthy", self._start_controller_manager, tools, 60)
        self._step("kube-scheduler", "healthy", self._start_scheduler, tools, timeout=60)
        self._step("kwok", "running", self._start_kwok, tools, timeout=30)
        self._register_nodes()
        self._step("prometheus", "ready", self._start_prometheus, tools, timeout=60)
        self._step("prometheus-b", "ready", self._start_prometheus_b, tools, timeout=60)
        for sidecar in self.sidecars:
            self._step(sidecar.name, "ready", self._sidecar_starter(sidecar), tools, timeout=60)
        self._step("thanos-query", "deduplicating 2 stores", self._start_thanos_query, tools, 60)
        self._step("kube-state-metrics", "serving", self._start_kube_state_metrics, tools, 60)
        self._wait_for_cluster()
        self._install_training_crds(tools)
        self._step("kueue", "serving its webhooks", self._start_kueue, tools, timeout=120)
        self._step("ray-dashboard", "serving", lambda _: self.kuberay.start_dashboard(), tools, 30)
        self._step("ray-operator", "ready", self._start_ray_operator, tools, timeout=60)
        if self.with_real_node:
            self.kubectl("apply", "-f", "-", input=json.dumps(_prometheus_rbac()))
            self.real_node.up(tools, self.kubectl)
            node_ip = self.real_node.settings().node_ip
            self.kubelets.targets.add(pki.REAL_NODE, [f"{node_ip}:10250"])

    def _step(
        self,
        name: str,
        what: str,
        start: Callable[[Toolbox], Callable[[], bool]],
        tools: Toolbox,
        timeout: float,
    ) -> None:
        began = time.monotonic()
        ready = start(tools)
        self.process(name).wait_until(ready, what, timeout)
        self.say(f"  {name:<24} {what} in {time.monotonic() - began:.1f}s")

    def _kubeconfig_of(self, identity: pki.Identity) -> Path:
        return self.directory / "pki" / f"{identity.name}.kubeconfig"

    def _link_tools(self, tools: Toolbox) -> None:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for name in ("kubectl", "helm", "kwok", "etcd", "ctr", "agent"):
            link = self.bin_dir / name
            link.unlink(missing_ok=True)
            link.symlink_to(tools[name])

    def _check_ports(self) -> None:
        owners = {
            "etcd": (self.ports.etcd, self.ports.etcd_peer),
            "kube-apiserver": (self.ports.apiserver,),
            "kube-controller-manager": (self.ports.controller_manager,),
            "kube-scheduler": (self.ports.scheduler,),
            "kwok": (self.ports.kwok,),
            "prometheus": (self.ports.prometheus,),
            "prometheus-b": (self.ports.prometheus_b,),
            "thanos-sidecar-a": (
                self.ports.thanos_sidecar_a_grpc,
                self.ports.thanos_sidecar_a_http,
            ),
            "thanos-sidecar-b": (
                self.ports.thanos_sidecar_b_grpc,
                self.ports.thanos_sidecar_b_http,
            ),
            "thanos-query": (self.ports.thanos_query, self.ports.thanos_query_grpc),
            "kube-state-metrics": (
                self.ports.kube_state_metrics,
                self.ports.kube_state_metrics_telemetry,
            ),
            "kueue": (self.ports.kueue_webhook, self.ports.kueue_metrics, self.ports.kueue_health),
            "ray-dashboard": (self.ports.ray_dashboard,),
            "ray-operator": (self.ports.ray_operator_health,),
        }
        for component, ports in owners.items():
            for port in ports:
                if not port_is_free(port):
                    raise ClusterError(
                        component,
                        f"port {port} on 127.0.0.1 is already taken by another program; stop "
                        "it, or set BREAKER_CLUSTER_PORT_OFFSET (e.g. 1000) to move every port "
                        "of the local cluster",
                    )

    def _start_etcd(self, tools: Toolbox) -> Callable[[], bool]:
        client = f"http://127.0.0.1:{self.ports.etcd}"
        peer = f"http://127.0.0.1:{self.ports.etcd_peer}"
        self.process("etcd").start(
            [
                str(tools["etcd"]),
                "--name=breaker-local",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=breaker-local={peer}",
                "--log-level=warn",
                # Test clusters are throwaway: skip the fsync latency on every write.
                "--unsafe-no-fsync",
            ]
        )
        return lambda: json.loads(_get(f"{client}/health")).get("health") == "true"

    def _start_apiserver(self, tools: Toolbox) -> Callable[[], bool]:
        keys = self.keys
        self.process("kube-apiserver").start(
            [
                str(tools["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{self.ports.etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.ports.apiserver}",
                f"--cert-dir={self.directory / 'certs'}",
                f"--tls-cert-file={keys.serving_cert}",
                f"--tls-private-key-file={keys.serving_key}",
                f"--client-ca-file={keys.ca_cert}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                # Kubelets by address only: a name would be looked up in the machine's DNS.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={keys.client_cert(pki.KUBELET_CLIENT)}",
                f"--kubelet-client-key={keys.client_key(pki.KUBELET_CLIENT)}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={keys.sa_pub}",
                f"--service-account-signing-key-file={keys.sa_key}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--allow-privileged=true",
                "--profiling=false",
                "--event-ttl=1h",
                *self.apiserver_flags,
            ]
        )
        return lambda: self._get_tls("/readyz") == "ok"

    def _component_flags(self, identity: pki.Identity, port: int) -> list[str]:
        kubeconfig = self._kubeconfig_of(identity)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.directory / 'certs' / identity.name}",
            "--leader-elect=false",
        ]

    def _start_controller_manager(self, tools: Toolbox) -> Callable[[], bool]:
        keys = self.keys
        port = self.ports.controller_manager
        self.process("kube-controller-manager").start(
            [
                str(tools["kube-controller-manager"]),
                *self._component_flags(pki.CONTROLLER_MANAGER, port),
                f"--service-account-private-key-file={keys.sa_key}",
                f"--root-ca-file={keys.ca_cert}",
                "--use-service-account-credentials=true",
                f"--cluster-signing-cert-file={keys.ca_cert}",
                f"--cluster-signing-key-file={keys.ca_key}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                # A large cluster's client rate, not the default 20/s: the Job controller
                # spends about four requests on each pod it creates, and the fleet bench's
                # 10,000 Jobs took 35 minutes to get their pods at 20/s.
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ]
        )
        return lambda: _get(f"https://127.0.0.1:{port}/healthz", verify=False) == "ok"

    def _start_scheduler(self, tools: Toolbox) -> Callable[[], bool]:
        port = self.ports.scheduler
        self.process("kube-scheduler").start(
            [str(tools["kube-scheduler"]), *self._component_flags(pki.SCHEDULER, port)]
        )
        return lambda: _get(f"https://127.0.0.1:{port}/healthz", verify=False) == "ok"

    def _start_kwok(self, tools: Toolbox) -> Callable[[], bool]:
        stages = paths.manifests_dir() / "kwok-stages.yaml"
        self.process("kwok").start(
            [
                str(tools["kwok"]),
                f"--kubeconfig={self._kubeconfig_of(pki.KWOK)}",
                f"--config={stages}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                # Fake pod addresses: never routed, never contacted. The nodes' own address
                # is on loopback: the API server asking a kwok "kubelet" for logs is refused
                # on this machine, never sent off it.
                "--cidr=10.64.0.0/10",
                "--node-ip=127.0.0.2",
                f"--server-address=127.0.0.1:{self.ports.kwok}",
            ]
        )
        return lambda: _get(f"http://127.0.0.1:{self.ports.kwok}/healthz") == "ok"

    def _start_prometheus(self, tools: Toolbox) -> Callable[[], bool]:
        return self._start_replica("a", self.ports.prometheus)

    def _start_prometheus_b(self, tools: Toolbox) -> Callable[[], bool]:
        return self._start_replica("b", self.ports.prometheus_b)

    def _start_replica(self, replica: str, port: int) -> Callable[[], bool]:
        """One Prometheus replica: the same targets, its own data and ``replica`` label
        (what the Thanos querier deduplicates by)."""
        base = self.directory / "prometheus"
        suffix = "" if replica == "a" else f"-{replica}"
        config = base / f"prometheus{suffix}.yml"
        labels = {thanos.REPLICA_LABEL: replica}
        prometheus.write_config(config, self.targets, self.kubelets, labels)
        self.process(f"prometheus{suffix}").start(
            prometheus.command(config, self._tsdb(replica), port)
        )
        return lambda: _get(f"http://127.0.0.1:{port}/-/ready").startswith("Prometheus")

    def _tsdb(self, replica: str) -> Path:
        base = self.directory / "prometheus"
        return base / "data" if replica == "a" else base / f"data-{replica}"

    @property
    def sidecars(self) -> tuple[thanos.Sidecar, ...]:
        p = self.ports
        return (
            thanos.Sidecar("a", p.thanos_sidecar_a_grpc, p.thanos_sidecar_a_http),
            thanos.Sidecar("b", p.thanos_sidecar_b_grpc, p.thanos_sidecar_b_http),
        )

    @property
    def thanos_query(self) -> thanos.Query:
        return thanos.Query(self.ports.thanos_query, self.ports.thanos_query_grpc)

    @property
    def thanos_url(self) -> str:
        """The Thanos querier's Prometheus API, over both replicas."""
        return self.thanos_query.url

    def _sidecar_starter(self, sidecar: thanos.Sidecar) -> Callable[[Toolbox], Callable[[], bool]]:
        def start(tools: Toolbox) -> Callable[[], bool]:
            self.start_sidecar(sidecar, tools)
            return sidecar.ready

        return start

    def start_sidecar(self, sidecar: thanos.Sidecar, tools: Toolbox | None = None) -> None:
        """Start (or, after a test stopped it, start again) a replica's sidecar."""
        tools = tools or ensure_built(say=lambda _: None)
        port = self.ports.prometheus if sidecar.replica == "a" else self.ports.prometheus_b
        self.process(sidecar.name).start(
            sidecar.command(
                tools["thanos"], f"http://127.0.0.1:{port}", self._tsdb(sidecar.replica)
            )
        )

    def _start_thanos_query(self, tools: Toolbox) -> Callable[[], bool]:
        query = self.thanos_query
        self.process("thanos-query").start(query.command(tools["thanos"], self.sidecars))
        return lambda: query.stores() == len(self.sidecars)

    def _start_kube_state_metrics(self, tools: Toolbox) -> Callable[[], bool]:
        """kube_pod_owner, kube_pod_info and friends, from the real exporter, scraped by the
        local Prometheus as a cluster's monitoring stack scrapes it."""
        self.kubectl("apply", "-f", "-", input=json.dumps(_kube_state_metrics_rbac()))
        port = self.ports.kube_state_metrics
        self.process("kube-state-metrics").start(
            [
                str(tools["kube-state-metrics"]),
                f"--kubeconfig={self._kubeconfig_of(pki.KUBE_STATE_METRICS)}",
                "--host=127.0.0.1",
                f"--port={port}",
                "--telemetry-host=127.0.0.1",
                f"--telemetry-port={self.ports.kube_state_metrics_telemetry}",
                f"--resources={','.join(KUBE_STATE_METRICS_RESOURCES)}",
                # Only what is read: every family of 10,000 kwok pods (the fleet bench)
                # scraped every 2 s would load the API server and Prometheus it measures.
                f"--metric-allowlist={','.join(KUBE_STATE_METRICS_FAMILIES)}",
            ]
        )
        self.targets.add("kube-state-metrics", [f"127.0.0.1:{port}"])
        return lambda: _get(f"http://127.0.0.1:{port}/healthz").strip() == "OK"

    def _install_training_crds(self, tools: Toolbox) -> None:
        """The real CRDs of Kubeflow Trainer (and JobSet, which it runs) and of KubeRay, from
        their modules: their objects are validated by the schemas their controllers read."""
        began = time.monotonic()
        trainer, kuberay = tools.manifests["trainer"], tools.manifests["kuberay"]
        install_crds(
            self.kubectl,
            trainer / "manifests" / "base" / "crds",
            trainer / "config" / "components" / "crd" / "bases",
            kuberay / "config" / "crd" / "bases",
        )
        self.say(
            f"  {'trainer, jobset, ray crds':<24} established in {time.monotonic() - began:.1f}s"
        )

    def _start_kueue(self, tools: Toolbox) -> Callable[[], bool]:
        """Kueue's CRDs and controller manager; its webhooks once it answers them."""
        kueue = self.kueue
        ready = kueue.start(tools, self.kubectl)

        def serving() -> bool:
            if not ready():
                return False
            kueue.install_webhooks(tools, self.kubectl)
            return True

        return serving

    def _start_ray_operator(self, tools: Toolbox) -> Callable[[], bool]:
        return self.kuberay.start_operator(tools, self.kubectl)

    def _register_nodes(self) -> None:
        from kubernetes import client

        api = client.CoreV1Api(self.api_client())
        wanted = set(self.nodes.names())
        existing = {node["metadata"]["name"] for node in self.gpu_nodes()}
        for name in sorted(existing - wanted):
            api.delete_node(name)
        for name in sorted(wanted - existing):
            api.create_node(self.nodes.manifest(name))  # type: ignore[arg-type]
        began = time.monotonic()
        self.process("kwok").wait_until(self._nodes_ready, "marking the GPU nodes Ready", 60)
        self.say(
            f"  {'gpu nodes':<24} {self.nodes.count} x {self.nodes.gpus} {GPU_RESOURCE} Ready "
            f"in {time.monotonic() - began:.1f}s"
        )

    def gpu_nodes(self) -> list[dict[str, Any]]:
        """The kwok GPU nodes as plain dicts (camelCase, as kubectl shows them)."""
        from kubernetes import client

        api_client = self.api_client()
        listed = client.CoreV1Api(api_client).list_node(label_selector=f"{NODE_LABEL}=true")
        nodes: list[dict[str, Any]] = api_client.sanitize_for_serialization(listed)["items"]
        return nodes

    def _nodes_ready(self) -> bool:
        """The requested GPU nodes are all registered and Ready."""
        ready = [
            node
            for node in self.gpu_nodes()
            if node_ready(node)
            and node["status"].get("allocatable", {}).get(GPU_RESOURCE) == str(self.nodes.gpus)
        ]
        return len(ready) == self.nodes.count

    def _some_nodes_ready(self) -> bool:
        """Whatever GPU nodes were registered (by any `up --nodes`) are Ready."""
        nodes = self.gpu_nodes()
        return bool(nodes) and all(node_ready(node) for node in nodes)

    def _wait_for_cluster(self) -> None:
        """Ready for work: the controllers have made the default ServiceAccount."""
        from kubernetes import client

        api = client.CoreV1Api(self.api_client())
        self.process("kube-controller-manager").wait_until(
            lambda: api.read_namespaced_service_account("default", "default") is not None,
            "creating the default ServiceAccount",
            60,
        )

    # -- status, clients ----------------------------------------------------------------

    def healthy(self) -> bool:
        if not all(self.process(name).running() for name in self.components()):
            return False
        import urllib3
        from kubernetes import client, config

        try:
            return self._get_tls("/readyz") == "ok" and self._some_nodes_ready()
        except (
            OSError,  # refused, timed out, TLS, no CA file yet
            ValueError,  # a garbled answer
            urllib3.exceptions.HTTPError,  # the API client's transport
            client.ApiException,
            config.ConfigException,  # no kubeconfig yet
        ) as error:
            # Not up is the answer this probe exists to give; the cause is for debugging.
            log.debug("the local cluster is not healthy: %s", error)
            return False

    def status(self) -> list[tuple[str, str]]:
        rows = []
        for name in self.components():
            pid = self.process(name).pid()
            rows.append((name, f"running, pid {pid}" if pid else "stopped"))
        return rows

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def _get_tls(self, path: str) -> str:
        context = ssl.create_default_context(cafile=str(self.keys.ca_cert))
        return _get(f"{self.server}{path}", context=context)

    def kubectl(self, *args: str, input: str | None = None) -> str:
        """The cluster's kubectl as its admin; stdout, or a ClusterError with stderr."""
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ClusterError(
                "kubectl", f"kubectl {' '.join(args)}: {result.stderr.strip()[:500]}"
            )
        return result.stdout

    def env(self) -> dict[str, str]:
        """Environment for commands that use this cluster (kubectl and helm of its version)."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    # -- down ---------------------------------------------------------------------------

    def down(self) -> None:
        with self._lock():
            stopped = self._stop_all()
            self.kueue.forget()
            shutil.rmtree(self.directory, ignore_errors=True)
        if stopped:
            self.say(f"Stopped {', '.join(stopped)}; removed {self.directory}")
        else:
            self.say(f"Nothing was running; removed {self.directory}")

    def _stop_all(self) -> list[str]:
        # The real node first: its pods are stopped through the API server while it runs.
        api_up = self.process("kube-apiserver").running() and self.bin_dir.exists()
        stopped = self.real_node.down(self.kubectl if api_up else None)
        if api_up and self.process("kueue").running():
            with contextlib.suppress(ClusterError):
                self.kueue.remove_webhooks(self.kubectl)
        # What other tools left running with the cluster (adopted): before the API server.
        guests = sorted(p.stem for p in (self.directory / "pids").glob("*.pid"))
        for name in guests:
            if name not in self.COMPONENTS and self.process(name).stop():
                stopped.append(name)
        for name in reversed(self.COMPONENTS):
            if self.process(name).stop():
                stopped.append(name)
        return stopped

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One `up` or `down` at a time per state directory (parallel test runs, two shells)."""
        lock_path = self.directory.parent / f".{self.directory.name}.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _get(url: str, verify: bool = True, context: ssl.SSLContext | None = None) -> str:
    if context is None and url.startswith("https") and not verify:
        # The controllers' self-signed serving certificates: only liveness is read here.
        context = ssl._create_unverified_context()
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        body: bytes = response.read()
    return body.decode().strip()


# What kube-state-metrics exports here: kube_pod_owner and kube_pod_info (backtests name a
# pod's workload and node with them), and the nodes and Jobs they point at.
KUBE_STATE_METRICS_RESOURCES = ("pods", "nodes", "jobs")
KUBE_STATE_METRICS_FAMILIES = (
    "kube_pod_owner",
    "kube_pod_info",
    "kube_node_info",
    "kube_job_owner",
)


def _kube_state_metrics_rbac() -> dict[str, Any]:
    return _cluster_role(
        "breaker:kube-state-metrics",
        pki.KUBE_STATE_METRICS.user,
        [
            {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch"]},
        ],
    )


def _prometheus_rbac() -> dict[str, Any]:
    """What a kubelet asks the API server before it serves /metrics/cadvisor."""
    rules = [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}]
    return _cluster_role("breaker:prometheus", pki.PROMETHEUS.user, rules)


def _cluster_role(name: str, user: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A ClusterRole of ``rules`` and its binding to ``user``, as one List to apply."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                "rules": rules,
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "User",
                        "name": user,
                    }
                ],
            },
        ],
    }
