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
import dataclasses
import datetime as dt
import ipaddress
import json
import logging
import os
import signal
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
from breaker.constants import API_VERSION, KEPT_ANNOTATION, QUARANTINE_LABEL, SESSIONS_ANNOTATION
from breaker.nodeagent import accounting, addresses, counting, flows, sessions

log = logging.getLogger("breaker.node-agent")

SEEK_SECONDS = 0.02  # between looks for a held pod's address while its sandbox starts
PROCESS_SEEK_SECONDS = 0.5  # /proc, where the runtime's record is not: looked through less often
FENCE_CHECK_SECONDS = 5.0  # every fence checked (a scrape source changed, a rule removed)
SESSIONS_SECONDS = 2.0  # how often the exec sessions into held pods are looked for
MAX_SESSIONS = 20  # listed per pod, on the Lease


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
    cni_cache_dir: Path = Path("/var/lib/cni/results")  # libcni's record of pod networks


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
        self.discovered: dict[str, str] = {}  # pod uid -> address, read from the node
        self.cni = addresses.CniRecords(settings.cni_cache_dir)
        self.processes_at = 0.0  # when /proc was last looked through for a pod's address
        self.fenced: set[str] = set()  # the held pods fenced (by their rules' comment)
        self.fence_lock = threading.Lock()  # the fence's rules: placed by one thread at a time
        self.fence_wake = threading.Event()
        self.seeking: set[str] = set()  # held pods whose address is not known yet
        self.addresses: tuple[str, ...] = ()  # the node's own, read again once a minute
        self.addresses_at = 0.0
        self.sessions_at = 0.0
        self.looked_at: frozenset[str] = frozenset()  # the pods the sessions were looked for in
        self.reported = "{}"  # the exec sessions, as the Lease says them
        # The sessions it ended, by pod, listed while the pod is held.
        self.ended: dict[str, dict[tuple[int, str], dict[str, Any]]] = {}
        self.renew = threading.Event()  # the Lease to be written now, not at its next renewal
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
        self._node_addresses()
        if self.counter is not None:
            self._ensure_chain(accounting.COUNT_CHAIN)
            self.counter.start(self.synced, self.settings.account_bytes)
        else:
            self._remove_chain(accounting.COUNT_CHAIN)  # counting turned off: its rules go
        for work in (self._watch, self._hold_lease, self._fencing):
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
            except Exception:  # the pass must never end the agent: a bug is logged, then again
                log.exception("pass failed unexpectedly; again in %.2fs", self.settings.interval)
            busy = any(p.breaker for p in self._snapshot().values())
            self.wake.wait(timeout=self.settings.interval if busy else 10.0)
            self.wake.clear()

    def _fencing(self) -> None:
        """Fence each held pod off the world as soon as its address is known: at once on a
        change of the node's pods, and every SEEK_SECONDS while a held pod's sandbox is
        starting (its address is read from the node before the API server has it). Apart
        from the pass, whose conntrack work takes longer than a pod takes to start."""
        checked = 0.0
        while not self.stopping.is_set():
            wait = 1.0
            try:
                with self.fence_lock:
                    now = time.monotonic()
                    everything = now - checked > FENCE_CHECK_SECONDS
                    if everything:
                        self._ensure_chain()  # someone may have removed it, or its jump
                        checked = now
                    if self._fence_pass(everything):
                        wait = SEEK_SECONDS
            except (RuntimeError, OSError) as error:
                log.warning("fencing failed: %s; again in 1s", error)
            except Exception:  # the fencing thread must never die: a bug is logged, then again
                log.exception("fencing failed unexpectedly; again in 1s")
            self.fence_wake.wait(timeout=wait)
            self.fence_wake.clear()

    def _fence_pass(self, everything: bool) -> bool:
        """Fence the held pods not fenced yet (``everything``: check every fence); whether a
        held pod's address is still being looked for."""
        wanted = self.held()
        if self.seeking:
            self._discover(self.seeking)
            wanted = self.held()
        todo = {c: p for c, p in wanted.items() if everything or c not in self.fenced}
        if todo:
            listing = self._iptables("-t", "raw", "-S").stdout
            node = self._node_addresses()
            for comment, pod in todo.items():
                try:
                    if comment not in self.fenced:
                        # Reset what it has open first: once fenced, the data it sends is
                        # dropped, its sequence runs ahead of what the far end received,
                        # and a reset sent then is out of the far end's window (RFC 5961:
                        # answered with a challenge ACK the fence drops), so the far end
                        # would never learn the connection is gone.
                        assert pod.ip is not None
                        open_now = flows.to_cut(
                            self._conntrack(pod.ip), pod.ip, pod.kept, self.settings.cluster_dns,
                            node,
                        )  # fmt: skip
                        self._reset_sockets(pod, open_now)
                        if open_now:
                            self._said_cut(pod, open_now, "as it was fenced")
                    self._fence(pod, comment, listing, node)
                    self.fenced.add(comment)
                except RuntimeError as error:  # one pod's trouble is not the others'
                    log.warning("%s: not fenced yet: %s", comment, error)
        return bool(self.seeking)

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        self.renew.set()
        self.fence_wake.set()
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

    def held(self) -> dict[str, Pod]:
        """The quarantined pods of the node the agent acts on, by their rules' comment: never
        a host-network pod (its address is the node's: cutting it would cut the node) nor a
        finished one (its address may be another pod's now). A pod whose address the API
        does not say yet has it read from the node (``_discover``)."""
        found, self.seeking = {}, set()
        for pod in self._snapshot().values():
            if not pod.breaker or pod.host_network or pod.finished:
                continue
            ip = addresses.pod_address(pod.ip) or self.discovered.get(pod.uid)
            if ip is None:
                self.seeking.add(pod.uid)
                continue
            if ip in self.addresses or ":" in ip:
                # The node's own address (cutting it would cut the node), or IPv6 (the
                # agent's rules are IPv4).
                continue
            found[flows.tag(pod.namespace, pod.name)] = dataclasses.replace(pod, ip=ip)
        return found

    def reconcile(self) -> None:
        """One pass: lift the drops nobody needs; fence the quarantined pods off the world
        outside the cluster; cut what they have open, both ways, of every protocol; cut the
        port-forward streams into them; list (and, when told, end) the exec sessions into
        them."""
        began = time.monotonic()
        if not self.synced.is_set():
            # Not listed yet: what is held is unknown, and nothing is lifted on a guess.
            return
        with self.fence_lock:
            wanted = self.held()
            listing = self._iptables("-t", "raw", "-S").stdout
            placed = flows.placed(listing)
            for comment, specs in placed.items():
                if comment not in wanted:
                    for spec in specs:
                        self._iptables("-t", "raw", "-D", flows.CHAIN, *spec, check=False)
                    log.info("%s: no longer quarantined, %d drops lifted", comment, len(specs))
            fences = {c for comment in wanted for c in flows.fence_chains(comment)}
            for chain in flows.chains(listing):
                if chain not in fences:
                    self._iptables("-t", "raw", "-F", chain, check=False)
                    self._iptables("-t", "raw", "-X", chain, check=False)
            self.fenced &= set(wanted)
        node = self._node_addresses()
        for comment, pod in wanted.items():
            assert pod.ip is not None
            try:
                cut = flows.to_cut(
                    self._conntrack(pod.ip), pod.ip, pod.kept, self.settings.cluster_dns, node
                )
                if cut:
                    self._cut(pod, comment, cut, placed.get(comment, []))
                self._streams(pod)
            except (RuntimeError, OSError) as error:  # one pod's trouble is not the others'
                log.warning("%s: not cut this pass: %s", comment, error)
        self._sessions(wanted, began)
        self.metrics.quarantined.set(len(wanted))
        self.metrics.drops.set(sum(len(v) for k, v in placed.items() if k in wanted))
        self.last_pass = time.monotonic()
        self.metrics.passes.observe(self.last_pass - began)

    def _fence(self, pod: Pod, comment: str, listing: str, node: tuple[str, ...]) -> None:
        """The pod's fence in place (its chains as wanted, and the jumps to them), written
        in one ``iptables-restore``: a pod being born is raced, and an iptables call a rule
        would take a pod's start."""
        assert pod.ip is not None
        wanted = flows.fence(pod.ip, comment, self._inside(node), pod.kept)
        there = set(flows.chains(listing))
        placed = flows.placed(listing).get(comment, [])
        for rule in flows.elsewhere(placed, pod.ip):
            # Placed for an address the pod had before (its sandbox made again, a pod of
            # the same name back on the node): another pod may have it now.
            self._iptables("-t", "raw", "-D", flows.CHAIN, *rule, check=False)
        stale = [
            chain
            for chain, rules in wanted.items()
            if chain != flows.CHAIN
            and (chain not in there or flows.chain_rules(listing, chain) != rules)
        ]
        jumps = [
            jump
            for jump in wanted[flows.CHAIN]
            if not any(flows.same_rule(there_rule, jump) for there_rule in placed)
        ]
        if not stale and not jumps:
            return
        lines = ["*raw", *(f":{chain} - [0:0]" for chain in stale)]
        lines += [f"-A {chain} {' '.join(rule)}" for chain in stale for rule in wanted[chain]]
        # First in our chain: from now on nothing of the pod crosses to the world.
        lines += [f"-I {flows.CHAIN} 1 {' '.join(_quoted(jump))}" for jump in jumps]
        restored = subprocess.run(
            [f"{self.settings.iptables}-restore", "-w", "5", "--noflush"],
            input="\n".join([*lines, "COMMIT", ""]),
            capture_output=True,
            text=True,
            check=False,
        )
        if restored.returncode != 0:
            raise RuntimeError(f"fencing {pod.ip}: {restored.stderr.strip()}")
        if jumps:
            log.info("%s/%s: fenced %s off the world", pod.namespace, pod.name, pod.ip)

    def _inside(self, node: tuple[str, ...]) -> list[str]:
        """What a fenced pod may still reach and be reached from: the cluster's ranges
        (their link-local part is the cloud's metadata service, not the cluster's: only the
        cluster DNS there, a node-local cache), and the node's own addresses."""
        ranges = [
            c
            for c in self.settings.cluster_cidrs
            if not ipaddress.ip_network(c, strict=False).is_link_local
        ]
        dns = [f"{a}/32" for a in self.settings.cluster_dns if ":" not in a]
        return [*ranges, *dns, *(f"{a}/32" for a in node if ":" not in a)]

    def _discover(self, uids: set[str]) -> None:
        """The addresses of held pods the API has not given yet, read from the node: first
        the container runtime's record of each pod's network (libcni's cache, written as
        the network is set up, before any of the pod's processes start), else the network
        namespace of a process of the pod (its cgroup names the pod's uid). A pod born
        quarantined is so fenced before its processes run, and before the API server or
        the NetworkPolicy dataplane know its address."""
        wanted = set(uids)
        for uid, ip in self.cni.addresses(wanted).items():
            self.discovered[uid] = ip
            wanted.discard(uid)
        now = time.monotonic()
        if wanted and now - self.processes_at >= PROCESS_SEEK_SECONDS:
            self.processes_at = now
            for uid, ip in addresses.process_addresses(wanted).items():
                self.discovered[uid] = ip
        present = {p.uid for p in self._snapshot().values()}
        self.discovered = {u: ip for u, ip in self.discovered.items() if u in present}

    def _conntrack(self, ip: str) -> list[flows.Flow]:
        """Every flow of the address: those it began (original source) and those made to it
        (reply source: directly, or through a Service or NodePort's translation)."""
        found: dict[flows.Flow, None] = {}
        for direction in ("--orig-src", "--reply-src"):
            listed = subprocess.run(
                ["conntrack", "-L", direction, ip], capture_output=True, text=True, check=False
            )
            found.update(dict.fromkeys(flows.parse_conntrack(listed.stdout)))
        return list(found)

    def _node_addresses(self) -> tuple[str, ...]:
        """The node's own addresses (the kubelet's probes come from one of them), read
        again once a minute."""
        now = time.monotonic()
        if now - self.addresses_at > 60 or not self.addresses:
            shown = subprocess.run(
                ["ip", "-j", "addr", "show"], capture_output=True, text=True, check=False
            )
            with contextlib.suppress(ValueError):
                self.addresses = tuple(
                    str(a["local"])
                    for link in json.loads(shown.stdout or "[]")
                    for a in link.get("addr_info") or []
                    if a.get("local")
                )
                self.addresses_at = now
        return self.addresses

    def _cut(self, pod: Pod, comment: str, cut: list[flows.Flow], placed: list[list[str]]) -> None:
        assert pod.ip is not None
        assert pod.breaker is not None
        # 1. The sockets, in the pod's namespace: the far end gets a reset.
        self._reset_sockets(pod, cut)
        # 2. The packets, both ways, ahead of conntrack.
        for flow in cut:
            for spec in flows.drop_rules(flow, comment, pod.ip, self.settings.cluster_cidrs):
                if not any(flows.same_rule(there, spec) for there in placed):
                    self._iptables("-t", "raw", "-A", flows.CHAIN, *spec)
                    placed.append(spec)
        # 3. The conntrack entries, which nothing can re-create now.
        for flow in cut:
            subprocess.run(
                ["conntrack", "-D", *flows.conntrack_delete(flow)], capture_output=True, check=False
            )
        self._said_cut(pod, cut)

    def _said_cut(self, pod: Pod, cut: list[flows.Flow], when: str = "") -> None:
        """Count, log and record as an Event the connections of a pod just cut."""
        assert pod.ip is not None
        self.metrics.cut.labels(pod.namespace, pod.name).inc(len(cut))
        said = f"{self.settings.node}: cut {len(cut)} connections of pod {pod.name}"
        said += f" {when}: " if when else ": "
        said += flows.summary(cut, pod.ip)
        log.info("%s/%s: %s", pod.namespace, pod.breaker, said)
        self._event(pod, "ConnectionsCut", said)

    def _reset_sockets(self, pod: Pod, cut: list[flows.Flow]) -> None:
        """Destroy the pod's sockets of these flows in its network namespace: its kernel
        sends the far end a reset."""
        assert pod.ip is not None
        netns = self._netns_of(pod.ip) if cut else None
        if netns is None:
            return
        for option, where in flows.sockets(cut, pod.ip).items():
            kill = ["ss", "-K", "-n", option, where]
            subprocess.run(["nsenter", f"--net={netns}", *kill], capture_output=True, check=False)

    def _streams(self, pod: Pod) -> None:
        """Cut the port-forward streams into the pod: loopback connections in its namespace
        held by a process outside it (the container runtime's end of the stream)."""
        assert pod.ip is not None
        netns = self._netns_of(pod.ip)
        if netns is None:
            return
        listed = subprocess.run(
            ["nsenter", f"--net={netns}", "ss", "-Htnp", "state", "established"],
            capture_output=True,
            text=True,
            check=False,
        )
        found = [s for s in sessions.parse_ss(listed.stdout) if s.loopback]
        if not found:
            return
        pod_netns = _netns_link(netns)
        # A process whose namespace cannot be read is taken for the pod's own: never cut
        # on a guess.
        owners = {pid: _process_netns(pid) or pod_netns for s in found for pid in s.pids}
        streams = sessions.port_forwards(found, owners, pod_netns)
        if not streams:
            return
        kill = ["ss", "-K", "-n", "-t", sessions.kill_filter(streams)]
        subprocess.run(["nsenter", f"--net={netns}", *kill], capture_output=True, check=False)
        ports = sorted({s.peer.rsplit(":", 1)[1] for s in streams if s.pids and any(
            owners.get(p, pod_netns) != pod_netns for p in s.pids)})  # fmt: skip
        said = (
            f"{self.settings.node}: cut the port-forward streams into pod {pod.name} "
            f"(port {', '.join(ports)})"
        )
        self.metrics.cut.labels(pod.namespace, pod.name).inc(len(ports))
        log.info("%s/%s: %s", pod.namespace, pod.breaker, said)
        self._event(pod, "PortForwardCut", said)

    def _sessions(self, wanted: dict[str, Pod], now: float) -> None:
        """The exec sessions into quarantined pods, looked for every SESSIONS_SECONDS:
        listed on the agent's Lease (the operator puts them in the Breaker's status) and
        ended when the pod's policy says killSessions and they began before the quarantine."""
        if now - self.sessions_at < SESSIONS_SECONDS and frozenset(wanted) == self.looked_at:
            return
        self.sessions_at = now
        found: dict[str, list[dict[str, Any]]] = {}
        table: list[sessions.Process] | None = None
        for pod in wanted.values():
            assert pod.ip is not None
            netns = self._netns_of(pod.ip)
            if netns is None:
                continue
            table = table if table is not None else _processes()
            listed = sessions.exec_sessions(table, _netns_link(netns))
            reported: list[dict[str, Any]] = []
            for session in listed:
                ended = (
                    pod.kept.kill_sessions
                    and pod.kept.since is not None
                    and session.started < pod.kept.since
                )
                if ended:
                    _end(table, session)
                    said = (
                        f"{self.settings.node}: ended the exec session into pod {pod.name} "
                        f"(pid {session.pid}: {session.command[:120]}), begun before the trip"
                    )
                    log.info("%s/%s: %s", pod.namespace, pod.breaker, said)
                    self._event(pod, "ExecSessionEnded", said)
                reported.append(
                    {
                        "pid": session.pid,
                        "command": session.command[:120],
                        "started": _stamp(session.started),
                        "ended": ended,
                    }
                )
            # Those it ended stay listed while the pod is held: the operator reads the Lease
            # every few seconds, and the status keeps what was ended.
            key = f"{pod.namespace}/{pod.name}"
            gone = self.ended.setdefault(key, {})
            for entry in reported:
                if entry["ended"]:
                    gone[(int(entry["pid"]), str(entry["started"]))] = entry
            listed_now = {(e["pid"], e["started"]) for e in reported}
            reported += [e for k, e in gone.items() if k not in listed_now]
            if reported:
                found[key] = reported[-MAX_SESSIONS:]
        held = {f"{p.namespace}/{p.name}" for p in wanted.values()}
        self.ended = {k: v for k, v in self.ended.items() if k in held}
        self.looked_at = frozenset(wanted)
        text = json.dumps(found, sort_keys=True, separators=(",", ":"))
        if text != self.reported:
            self.reported = text
            self.renew.set()  # the Lease says it at once

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
                self.fence_wake.set()
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
                    self.fence_wake.set()
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
                    # The exec sessions into the node's quarantined pods, for the Breakers'
                    # status (the agent writes nothing else anywhere).
                    "annotations": {SESSIONS_ANNOTATION: self.reported},
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
            self.renew.wait(LEASE_SECONDS / 3)
            self.renew.clear()

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
            self.core.create_namespaced_event(pod.namespace, body, _request_timeout=10)
        except client.ApiException as error:
            log.warning("Event on Breaker %s/%s: %s", pod.namespace, pod.breaker, error.reason)
        except (urllib3.exceptions.HTTPError, OSError) as error:  # the API server away
            log.warning("Event on Breaker %s/%s: %s", pod.namespace, pod.breaker, error)

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


def _netns_link(path: str) -> str:
    """A network namespace file's identity as /proc/PID/ns/net links name it."""
    return f"net:[{Path(path).stat().st_ino}]"


def _process_netns(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/ns/net").readlink())
    except OSError:
        return ""


def _processes() -> list[sessions.Process]:
    """Every process of the node (the agent runs in the host's PID namespace), as much as
    the exec sessions need of each."""
    ticks = os.sysconf("SC_CLK_TCK")
    boot = _boot()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            netns = str(Path(f"/proc/{pid}/ns/net").readlink())
            ppid, started = sessions.parse_stat(Path(f"/proc/{pid}/stat").read_text())
            cgroup = Path(f"/proc/{pid}/cgroup").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread
        found.append(
            sessions.Process(
                pid, ppid, netns, cgroup, boot + started / ticks, command.decode(errors="replace")
            )
        )
    return found


def _stamp(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _quoted(rule: list[str]) -> list[str]:
    """A rule's words for iptables-restore: a comment quoted."""
    return [f'"{word}"' if " " in word or ":" in word else word for word in rule]


def _end(table: list[sessions.Process], session: sessions.Session) -> None:
    """Kill an exec session's process and everything below it, each only if it is still
    the process the table read (a pid is reused once its process is gone)."""
    started = {p.pid: p.started for p in table}
    for pid in [*sessions.descendants(table, session.pid), session.pid]:
        try:
            now = sessions.parse_stat(Path(f"/proc/{pid}/stat").read_text())[1]
        except (OSError, ValueError, IndexError):
            continue  # gone already
        ticks = os.sysconf("SC_CLK_TCK")
        if abs(_boot() + now / ticks - started.get(pid, -1)) > 1 / ticks + 1e-6:
            continue  # another process under the same pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _boot() -> float:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        stat = Path("/proc/stat").read_text()
        return float(
            next(line.split()[1] for line in stat.splitlines() if line.startswith("btime"))
        )
    return 0.0
