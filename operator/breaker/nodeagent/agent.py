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

import collections
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
from breaker.nodeagent import accounting, flows

log = logging.getLogger("breaker.node-agent")
PENDING_SECONDS = 30.0  # how long a new flow from an unknown address waits for its pod


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
        self.flows = {
            name: prometheus_client.Counter(
                name.removesuffix("_total"),
                text,
                ["source_namespace", "source_pod", *labels],
                registry=self.registry,
            )
            for name, (text, labels) in accounting.HELP.items()
        }
        self.counted: dict[accounting.Source, set[tuple[str, tuple[str, ...]]]] = {}

    def add(self, tally: accounting.Tally) -> None:
        for (name, labels), value in tally.items():
            self.flows[name].labels(*labels).inc(value)
            source = accounting.Source(labels[0], labels[1])
            self.counted.setdefault(source, set()).add((name, labels))

    def forget(self, source: accounting.Source) -> None:
        """A pod gone from the node: its series go too (they would grow without end)."""
        for name, labels in self.counted.pop(source, set()):
            with contextlib.suppress(KeyError):
                self.flows[name].remove(*labels)


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
        self.by_ip: dict[str, accounting.Source] | None = None  # None: pods changed since
        self.metrics = Metrics()
        self.last_pass = 0.0
        self.ledger = accounting.Ledger(accounting.Scopes(settings.cluster_cidrs))
        self.recount = threading.Event()  # the node's pods changed: count (and place rules) now
        self.ledger_lock = threading.Lock()  # the events' thread and the counts' share it
        self.last_count = 0.0
        self.events: subprocess.Popen[str] | None = None
        # New flows from an address no pod of the node has (yet): (when, flow)
        self.pending: collections.deque[tuple[float, flows.Flow]] = collections.deque(maxlen=2048)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        self._ensure_chain()
        work_list = [self._watch, self._hold_lease]
        if self.settings.flow_interval > 0:
            self._ensure_chain(accounting.COUNT_CHAIN)
            if self.settings.account_bytes:
                self._account_bytes()
            work_list += [self._count_flows, self._follow_new_flows]
        for work in work_list:
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
        self.recount.set()
        if self.events is not None:
            self.events.terminate()

    def _snapshot(self) -> dict[tuple[str, str], Pod]:
        with self.lock:
            return dict(self.pods)

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

    # -- counting the pods' flows -----------------------------------------------------------

    def _account_bytes(self) -> None:
        """Byte counts need conntrack accounting, off by default; it applies to new flows."""
        path = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
        try:
            if path.read_text().strip() != "1":
                path.write_text("1")
                log.info("turned nf_conntrack_acct on: flows opened from now on count bytes")
        except OSError as error:
            log.warning("no byte counts: cannot turn nf_conntrack_acct on: %s", error)

    def _count_flows(self) -> None:
        while not self.stopping.is_set():
            try:
                self.count_flows()
            except (RuntimeError, OSError) as error:
                wait = self.settings.flow_interval
                log.warning("counting flows: %s; again in %.0fs", error, wait)
                with contextlib.suppress(RuntimeError):
                    self._ensure_chain(accounting.COUNT_CHAIN)
            except Exception:  # the counting thread must never die: a bug is logged
                log.exception("counting flows failed unexpectedly")
            self.recount.wait(self.settings.flow_interval)
            self.recount.clear()
            # Pods come in bursts (a job's start): a listing a second at most.
            self.stopping.wait(max(0.0, 1.0 - (time.monotonic() - self.last_count)))

    def count_flows(self) -> None:
        """One count: the pods' SYN counting rules brought in line, read; then conntrack."""
        pods = [p for p in self._snapshot().values() if p.ip and not p.host_network]
        chain = accounting.COUNT_CHAIN
        listing = self._iptables("-t", "raw", "-S", chain, "-v").stdout
        placed = accounting.read_counts(listing)
        wanted = {p.source.comment: (p, accounting.count_rule(p.source, p.ip or "")) for p in pods}
        for comment, (spec, _) in placed.items():
            if comment not in wanted or wanted[comment][1] != spec:
                self._iptables("-t", "raw", "-D", chain, *spec, check=False)
        fresh = []
        for comment, (pod, spec) in wanted.items():
            if comment not in placed or placed[comment][0] != spec:
                self._iptables("-t", "raw", "-A", chain, *spec)
                fresh.append(pod.source)
        counts = {
            wanted[c][0].source: packets
            for c, (spec, packets) in placed.items()
            if c in wanted and wanted[c][1] == spec
        }
        listed = subprocess.run(["conntrack", "-L"], capture_output=True, text=True, check=False)
        by_ip = {p.ip: p.source for p in pods if p.ip}
        # The listing's bytes and SYN counts are this thread's alone; what each pod has
        # reached is shared with the events' thread, which must not wait on a long listing.
        self.metrics.add(self.ledger.account(flows.iter_entries(listed.stdout), by_ip))
        with self.ledger_lock:
            for source in fresh:
                self.metrics.add(self.ledger.placed(source))
            self.metrics.add(self.ledger.attempts(counts))
            for source in self.ledger.forget(p.source for p in pods):
                self.metrics.forget(source)
        self.last_count = time.monotonic()

    def _follow_new_flows(self) -> None:
        """conntrack's NEW events, one line each, for as long as the agent runs."""
        while not self.stopping.is_set():
            try:
                self.events = subprocess.Popen(
                    ["conntrack", "-E", "-e", "NEW"],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                assert self.events.stdout is not None
                for line in self.events.stdout:
                    self.opened(line)
                why = self.events.stderr.read().strip() if self.events.stderr else ""
                if not self.stopping.is_set():
                    # e.g. the netlink buffer overran under a flood of new connections
                    log.warning("conntrack's events ended (%s); again in 1s", why or "no reason")
            except OSError as error:
                log.warning("following conntrack's events: %s; again in 1s", error)
            except Exception:  # the events' thread must never die: a bug is logged
                log.exception("following conntrack's events failed unexpectedly")
            self.stopping.wait(1)

    def opened(self, line: str) -> None:
        """One NEW event: counted for the pod whose address opened it. A pod's first
        connections can come before the watch tells its address: those wait a while, and
        are counted when it does."""
        sources, changed = self._sources()
        now = time.monotonic()
        with self.ledger_lock:
            for entry in flows.parse_entries(line):
                source = sources.get(entry.flow.src)
                if source is not None:
                    self.metrics.add(self.ledger.opened(entry.flow, source))
                else:
                    self.pending.append((now, entry.flow))
            if changed and self.pending:
                waiting = list(self.pending)
                self.pending.clear()
                for at, flow in waiting:
                    source = sources.get(flow.src)
                    if source is not None:
                        self.metrics.add(self.ledger.opened(flow, source))
                    elif now - at < PENDING_SECONDS:
                        self.pending.append((at, flow))

    def _sources(self) -> tuple[dict[str, accounting.Source], bool]:
        """The node's own pods by address (host-network pods have the node's), and whether
        they changed since the last call."""
        with self.lock:
            changed = self.by_ip is None
            if self.by_ip is None:
                self.by_ip = {
                    p.ip: p.source for p in self.pods.values() if p.ip and not p.host_network
                }
            return self.by_ip, changed

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
                    self.by_ip = None
                self.synced.set()
                self.recount.set()
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
                        self.by_ip = None
                    self.wake.set()
                    self.recount.set()
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
        return self.synced.is_set() and time.monotonic() - self.last_pass < 30

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
