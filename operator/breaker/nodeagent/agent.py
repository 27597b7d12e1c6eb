"""The node agent: cuts the open connections of the quarantined pods of its own node, and
counts every pod's flows for the network presets (``accounting.py``) on any CNI.

It watches only the pods of its node (a field selector on spec.nodeName) and reads only
their quarantine label and the operator's ``breaker.dev/egress-kept`` annotation. While a
pod of the node is quarantined it passes over it every ``interval`` (and at once on any
change of a pod): the flows the pod opened, from conntrack, are cut as ``flows.py``
says. When the label goes (a reset) or the pod does, every drop placed for it is
lifted. Drops stay across a restart of the agent: containment never depends on it
running, and the next agent lifts what is no longer wanted.

It holds a Lease (``breaker-node-agent-<node>``) in the operator's namespace so that the
operator can tell, at a trip, whether open connections on that node are cut; it posts a
``ConnectionsCut`` Event on the Breaker for every cut. It touches nothing else: no
NetworkPolicy, no workload, no pod.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import prometheus_client
import urllib3
from kubernetes import client, watch

from breaker.actions.connections import LEASE_SECONDS, Kept, lease_name
from breaker.constants import API_VERSION, KEPT_ANNOTATION, QUARANTINE_LABEL
from breaker.nodeagent import accounting, counting, flows

log = logging.getLogger("breaker.node-agent")


@dataclass(frozen=True)
class Settings:
    node: str
    namespace: str  # the operator's: where the Lease lives
    cluster_dns: tuple[str, ...] = ("10.96.0.10",)
    netns_dir: Path = Path("/var/run/netns")
    interval: float = 0.25  # seconds between passes while a pod of the node is quarantined
    iptables: str = "iptables"
    flow_interval: float = 10.0  # seconds between counts of the pods' flows (0: none)
    cluster_cidrs: tuple[str, ...] = accounting.CLUSTER_CIDRS
    account_bytes: bool = True  # turn the node's nf_conntrack_acct on for byte counts


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str
    ip: str | None
    breaker: str | None  # the quarantine label: the Breaker holding it
    kept: Kept
    host_network: bool = False  # its address is the node's: its flows are not its own
    finished: bool = False  # Succeeded or Failed: its address may be another pod's now

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Pod:
        """From the pod as the API serves it (JSON)."""
        meta = obj.get("metadata") or {}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        return cls(
            meta["namespace"],
            meta["name"],
            meta.get("uid", ""),
            (obj.get("status") or {}).get("podIP"),
            labels.get(QUARANTINE_LABEL),
            Kept.parse(annotations.get(KEPT_ANNOTATION)),
            bool((obj.get("spec") or {}).get("hostNetwork")),
            (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"),
        )

    @property
    def source(self) -> accounting.Source:
        return accounting.Source(self.namespace, self.name)


@dataclass
class Metrics:
    registry: prometheus_client.CollectorRegistry = field(
        default_factory=prometheus_client.CollectorRegistry
    )

    def __post_init__(self) -> None:
        self.cut = prometheus_client.Counter(
            "breaker_node_agent_connections_cut_total",
            "Connections of quarantined pods cut (socket destroyed, flow dropped)",
            ["namespace", "pod"],
            registry=self.registry,
        )
        self.quarantined = prometheus_client.Gauge(
            "breaker_node_agent_quarantined_pods",
            "Pods of this node under quarantine",
            registry=self.registry,
        )
        self.drops = prometheus_client.Gauge(
            "breaker_node_agent_drop_rules", "Stateless drops in place", registry=self.registry
        )
        self.passes = prometheus_client.Histogram(
            "breaker_node_agent_pass_seconds",
            "One pass over the quarantined pods",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )


class NodeAgent:
    def __init__(self, api: client.ApiClient, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        # Plain JSON in and out: the agent reads three fields of a pod and writes two kinds.
        self.core: Any = client.CoreV1Api(api)
        self.pods: dict[tuple[str, str], Pod] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.netns: dict[str, str] = {}  # pod IP -> its network namespace's path
        self.metrics = Metrics()
        self.last_pass = 0.0
        self.counted = counting.Pods({}, 0)  # the pods whose flows are counted, by address
        self.counter: counting.FlowCounter | None = None
        if settings.flow_interval > 0:
            self.counter = counting.FlowCounter(
                self._counted,
                self._iptables,
                self.metrics.registry,
                settings.flow_interval,
                settings.cluster_cidrs,
            )

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        self._ensure_chain()
        if self.counter is not None:
            self._ensure_chain(accounting.COUNT_CHAIN)
            self.counter.start(self.synced, self.settings.account_bytes)
        else:
            self._remove_chain(accounting.COUNT_CHAIN)  # counting turned off: its rules go
        for work in (self._watch, self._hold_lease):
            threading.Thread(target=work, name=work.__name__, daemon=True).start()
        if not self.synced.wait(timeout=60):
            log.warning("no list of the node's pods after 60s; carrying on and retrying")
        log.info("node agent on %s: cutting what quarantined pods opened", self.settings.node)
        while not self.stopping.is_set():
            try:
                self.reconcile()
            except (RuntimeError, OSError) as error:
                # iptables busy or our chain flushed by someone: said, and set up again.
                log.warning("pass failed: %s; again in %.2fs", error, self.settings.interval)
                with contextlib.suppress(RuntimeError):
                    self._ensure_chain()
            busy = any(p.breaker for p in self._snapshot().values())
            self.wake.wait(timeout=self.settings.interval if busy else 10.0)
            self.wake.clear()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.counter is not None:
            self.counter.stop()

    def _snapshot(self) -> dict[tuple[str, str], Pod]:
        with self.lock:
            return dict(self.pods)

    def _counted(self) -> counting.Pods:
        return self.counted

    def _pods_changed(self) -> None:
        """Called with the lock held after the pods changed: the addresses whose flows are
        counted, if they changed, and a count soon (rules for new pods)."""
        by_ip: dict[str, accounting.Source] = {}
        for pod in self.pods.values():
            if pod.ip and not pod.host_network and not pod.finished:
                by_ip[pod.ip] = pod.source
        if by_ip != self.counted.by_ip:
            self.counted = counting.Pods(by_ip, self.counted.version + 1)
            if self.counter is not None:
                self.counter.changed()

    def reconcile(self) -> None:
        """One pass: lift the drops nobody needs; cut what quarantined pods opened."""
        began = time.monotonic()
        pods = self._snapshot()
        wanted = {flows.tag(p.namespace, p.name): p for p in pods.values() if p.breaker and p.ip}
        placed = flows.placed(self._iptables("-t", "raw", "-S", flows.CHAIN).stdout)
        for comment, specs in placed.items():
            if comment not in wanted:
                for spec in specs:
                    self._iptables("-t", "raw", "-D", flows.CHAIN, *spec, check=False)
                log.info("%s: no longer quarantined, %d drops lifted", comment, len(specs))
        for comment, pod in wanted.items():
            assert pod.ip is not None
            listed = subprocess.run(
                ["conntrack", "-L", "-s", pod.ip], capture_output=True, text=True, check=False
            )
            cut = flows.to_cut(
                flows.parse_conntrack(listed.stdout), pod.ip, pod.kept, self.settings.cluster_dns
            )
            if cut:
                self._cut(pod, comment, cut, placed.get(comment, []))
        self.metrics.quarantined.set(len(wanted))
        self.metrics.drops.set(sum(len(v) for k, v in placed.items() if k in wanted))
        self.last_pass = time.monotonic()
        self.metrics.passes.observe(self.last_pass - began)

    def _cut(self, pod: Pod, comment: str, cut: list[flows.Flow], placed: list[list[str]]) -> None:
        assert pod.ip is not None
        assert pod.breaker is not None
        # 1. The sockets, in the pod's namespace: the far end gets a reset.
        netns = self._netns_of(pod.ip)
        if netns is not None:
            for protocol, option in (("tcp", "-t"), ("udp", "-u")):
                mine = [f for f in cut if f.protocol == protocol]
                if mine:
                    kill = ["ss", "-K", "-n", option, flows.ss_filter(mine)]
                    subprocess.run(
                        ["nsenter", f"--net={netns}", *kill], capture_output=True, check=False
                    )
        # 2. The packets, both ways, ahead of conntrack.
        present = {tuple(spec) for spec in placed}
        for flow in cut:
            for spec in flows.drop_rules(flow, comment):
                if tuple(spec) not in present:
                    self._iptables("-t", "raw", "-A", flows.CHAIN, *spec)
        # 3. The conntrack entries, which nothing can re-create now.
        for flow in cut:
            entry = ["-p", flow.protocol, "-s", flow.src, "-d", flow.dst]
            ports = ["--sport", str(flow.sport), "--dport", str(flow.dport)]
            subprocess.run(["conntrack", "-D", *entry, *ports], capture_output=True, check=False)
        self.metrics.cut.labels(pod.namespace, pod.name).inc(len(cut))
        said = f"{self.settings.node}: cut {len(cut)} connections of pod {pod.name}: "
        said += flows.summary(cut)
        log.info("%s/%s: %s", pod.namespace, pod.breaker, said)
        self._event(pod, "ConnectionsCut", said)

    # -- the node: iptables, namespaces ----------------------------------------------------

    def _iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.settings.iptables, "-w", "5", *args], capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
        return result

    def _remove_chain(self, chain: str) -> None:
        self._iptables("-t", "raw", "-D", "PREROUTING", "-j", chain, check=False)
        self._iptables("-t", "raw", "-F", chain, check=False)
        self._iptables("-t", "raw", "-X", chain, check=False)

    def _ensure_chain(self, chain: str = flows.CHAIN) -> None:
        """Our chain in the raw table, first in PREROUTING: a pod's packets enter the node
        there, before conntrack."""
        if self._iptables("-t", "raw", "-S", chain, check=False).returncode != 0:
            self._iptables("-t", "raw", "-N", chain)
        jump = ("-t", "raw", "-C", "PREROUTING", "-j", chain)
        if self._iptables(*jump, check=False).returncode != 0:
            self._iptables("-t", "raw", "-I", "PREROUTING", "1", "-j", chain)

    def _netns_of(self, ip: str) -> str | None:
        """The network namespace holding ``ip`` (the CNI's, under netns_dir)."""
        known = self.netns.get(ip)
        if known is not None and Path(known).exists():
            return known
        directory = self.settings.netns_dir
        for path in sorted(directory.iterdir()) if directory.is_dir() else []:
            shown = subprocess.run(
                ["nsenter", f"--net={path}", "ip", "-4", "-j", "addr", "show"],
                capture_output=True,
                text=True,
                check=False,
            )
            with contextlib.suppress(ValueError):
                for link in json.loads(shown.stdout or "[]"):
                    for address in link.get("addr_info") or []:
                        self.netns[address["local"]] = str(path)
        return self.netns.get(ip)

    # -- the API: the node's pods, the Lease, Events ---------------------------------------

    def _watch(self) -> None:
        selector = f"spec.nodeName={self.settings.node}"
        while not self.stopping.is_set():
            try:
                response = self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False
                )
                listed = json.loads(response.data)
                found = [Pod.of(item) for item in listed.get("items") or []]
                with self.lock:
                    self.pods = {(p.namespace, p.name): p for p in found}
                    self._pods_changed()
                self.synced.set()
                self.wake.set()
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=300,
                )
                for event in stream:
                    if event["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    pod = Pod.of(event["raw_object"])
                    key = (pod.namespace, pod.name)
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.pods.pop(key, None)
                        else:
                            self.pods[key] = pod
                        self._pods_changed()
                    self.wake.set()
                    if self.stopping.is_set():
                        return
            except (
                client.ApiException,
                urllib3.exceptions.HTTPError,  # the API server away, a watch cut
                OSError,
                ValueError,  # a garbled answer
            ) as error:
                log.warning("watching the node's pods: %s; again in 1s", error)
                time.sleep(1)
            except Exception:  # the watch thread must never die: a bug is logged, then list again
                log.exception("watching the node's pods failed unexpectedly; again in 1s")
                time.sleep(1)

    def _hold_lease(self) -> None:
        coordination: Any = client.CoordinationV1Api(self.api)
        name, namespace = lease_name(self.settings.node), self.settings.namespace
        while not self.stopping.is_set():
            now = dt.datetime.now(dt.UTC)
            body = {
                "metadata": {
                    "name": name,
                    "labels": {"app.kubernetes.io/component": "node-agent"},
                },
                "spec": {
                    "holderIdentity": self.settings.node,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
            }
            try:
                try:
                    coordination.patch_namespaced_lease(name, namespace, body)
                except client.ApiException as error:
                    if error.status != 404:
                        raise
                    coordination.create_namespaced_lease(namespace, body)
            except (client.ApiException, urllib3.exceptions.HTTPError, OSError) as error:
                log.warning("renewing Lease %s/%s: %s", namespace, name, error)
            except Exception:  # the Lease thread must never die: a bug is logged, then renew again
                log.exception("renewing Lease %s/%s failed unexpectedly", namespace, name)
            self.stopping.wait(LEASE_SECONDS / 3)

    def _event(self, pod: Pod, reason: str, message: str) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"generateName": f"{pod.breaker}.", "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": "Breaker",
                "name": pod.breaker,
                "namespace": pod.namespace,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Normal",
            "source": {"component": "breaker-node-agent", "host": self.settings.node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(pod.namespace, body)
        except client.ApiException as error:
            log.warning("Event on Breaker %s/%s: %s", pod.namespace, pod.breaker, error.reason)

    # -- health and metrics ------------------------------------------------------------------

    def healthy(self) -> bool:
        counting_ok = self.counter is None or self.counter.healthy()
        return self.synced.is_set() and time.monotonic() - self.last_pass < 30 and counting_ok

    def serve(self, address: str, port: int) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body = prometheus_client.generate_latest(agent.metrics.registry)
                    code, kind = 200, prometheus_client.CONTENT_TYPE_LATEST
                elif self.path == "/healthz":
                    code = 200 if agent.healthy() else 503
                    body, kind = (b"ok" if code == 200 else b"not ready"), "text/plain"
                else:
                    code, body, kind = 404, b"not found", "text/plain"
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        server = ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server
