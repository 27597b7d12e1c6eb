"""The node agent's flow counting: the threads and commands behind ``accounting.py``.

Two threads. One follows conntrack's NEW events (``conntrack -E -e NEW``) and counts each
connection for the pod whose address opened it. The other, every ``interval`` and soon
after the node's pods change, brings the pods' SYN counting rules in line (chain
``BREAKER-COUNT`` in the raw table), reads them, and lists the conntrack table for bytes
and unanswered flows. What they count is served on the agent's /metrics. They touch only
that chain, the conntrack table (read) and, once, the node's ``nf_conntrack_acct``.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import prometheus_client

from breaker.nodeagent import accounting, flows
from breaker.nodeagent.accounting import Source

log = logging.getLogger("breaker.node-agent")

PENDING_SECONDS = 30.0  # how long a new flow from an unknown address waits for its pod
MIN_GAP_SECONDS = 1.0  # pods come in bursts (a job's start): a listing a second at most
# conntrack's netlink buffer for events: a burst of new connections overruns the default.
EVENT_BUFFER_BYTES = 8 * 1024 * 1024

Iptables = Callable[..., "subprocess.CompletedProcess[str]"]
Run = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Pods:
    """The node's pods whose flows are counted, by address, and a version that changes
    with them (host-network pods have the node's address; finished pods none)."""

    by_ip: Mapping[str, Source]
    version: int


class FlowMetrics:
    """The per-pod counters, and which series each pod has (they go with the pod)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.counters = {
            name: prometheus_client.Counter(
                name.removesuffix("_total"),
                text,
                ["source_namespace", "source_pod", *labels],
                registry=registry,
            )
            for name, (text, labels) in accounting.HELP.items()
        }
        self.event_errors = prometheus_client.Counter(
            "breaker_node_agent_conntrack_event_errors",
            "conntrack's event stream's complaints (ENOBUFS: events lost under a burst)",
            registry=registry,
        )
        self.counts = prometheus_client.Histogram(
            "breaker_node_agent_flow_count_seconds",
            "One count: the SYN rules brought in line and read, the conntrack table listed",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.series: dict[Source, set[tuple[str, tuple[str, ...]]]] = {}
        self.lock = threading.Lock()

    def add(self, tally: accounting.Tally) -> None:
        with self.lock:
            for (name, labels), value in tally.items():
                self.counters[name].labels(*labels).inc(value)
                self.series.setdefault(Source(labels[0], labels[1]), set()).add((name, labels))

    def forget(self, source: Source, port: int | None = None) -> None:
        """A pod's series (gone from the node), or those of one port whose label went."""
        with self.lock:
            mine = self.series.get(source, set())
            going = {
                (name, labels)
                for name, labels in mine
                if port is None or (name == accounting.FLOWS and labels[-1] == str(port))
            }
            for name, labels in going:
                with contextlib.suppress(KeyError):
                    self.counters[name].remove(*labels)
            mine -= going
            if not mine:
                self.series.pop(source, None)


class FlowCounter:
    def __init__(
        self,
        pods: Callable[[], Pods],
        iptables: Iptables,
        registry: prometheus_client.CollectorRegistry,
        interval: float,
        cluster_cidrs: Iterable[str] = accounting.CLUSTER_CIDRS,
        run: Run = subprocess.run,
    ) -> None:
        self.pods, self.iptables, self.run, self.interval = pods, iptables, run, interval
        self.metrics = FlowMetrics(registry)
        self.ledger = accounting.Ledger(accounting.Scopes(cluster_cidrs))
        self.lock = threading.Lock()  # the ledger's parts both threads touch
        self.pending: collections.deque[tuple[float, flows.Flow]] = collections.deque(maxlen=2048)
        self.seen_version = -1
        self.recount = threading.Event()
        self.stopping = threading.Event()
        self.events: subprocess.Popen[str] | None = None
        self.last_count = 0.0

    # -- the loops ----------------------------------------------------------------------

    def start(self, synced: threading.Event, account_bytes: bool) -> None:
        if account_bytes:
            _account_bytes()
        for work in (self._follow_new_flows, self._count_every_interval):
            threading.Thread(target=work, args=(synced,), name=work.__name__, daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        self.recount.set()
        if self.events is not None:
            with contextlib.suppress(OSError):
                self.events.terminate()

    def changed(self) -> None:
        """The node's pods changed: count again soon (new rules, gone pods)."""
        self.recount.set()

    def healthy(self) -> bool:
        """Counted within three intervals (and a minute's grace for a slow listing)."""
        return time.monotonic() - self.last_count < 3 * self.interval + 60

    def _count_every_interval(self, synced: threading.Event) -> None:
        # The first listing learns where counts stand: with the node's pods known, or it
        # would learn nothing and count every open flow's bytes at the second.
        synced.wait(timeout=60)
        while not self.stopping.is_set():
            try:
                self.count()
            except (RuntimeError, OSError) as error:
                log.warning("counting flows: %s; again in %.0fs", error, self.interval)
            except Exception:  # the counting thread must never die: a bug is logged
                log.exception("counting flows failed unexpectedly")
            self.recount.wait(self.interval)
            self.recount.clear()
            self.stopping.wait(max(0.0, MIN_GAP_SECONDS - (time.monotonic() - self.last_count)))

    def _follow_new_flows(self, synced: threading.Event) -> None:
        """conntrack's NEW events, one line each, for as long as the agent runs."""
        command = ["conntrack", "-E", "-e", "NEW", f"--buffer-size={EVENT_BUFFER_BYTES}"]
        while not self.stopping.is_set():
            try:
                with subprocess.Popen(
                    command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                ) as events:
                    self.events = events
                    assert events.stdout is not None
                    assert events.stderr is not None
                    complaints = threading.Thread(
                        target=self._complaints, args=(events.stderr,), daemon=True
                    )
                    complaints.start()
                    try:
                        for line in events.stdout:
                            self.opened(line)
                    finally:
                        events.kill()
                if not self.stopping.is_set():
                    log.warning("conntrack's events ended (exit %s); again in 1s", events.wait())
            except OSError as error:
                log.warning("following conntrack's events: %s; again in 1s", error)
            except Exception:  # the events' thread must never die: a bug is logged
                log.exception("following conntrack's events failed unexpectedly")
            self.stopping.wait(1)

    def _complaints(self, stderr: Iterable[str]) -> None:
        """conntrack says so when the kernel dropped events (ENOBUFS) and carries on: read
        it, or its pipe fills and the events stop without a word. Its notices (the buffer
        size set, the events shown at exit) are only logged."""
        for line in stderr:
            said = line.strip()[:200]
            if "ENOBUFS" in said or "losing" in said or "rror" in said:
                self.metrics.event_errors.inc()
                log.warning("conntrack's events: %s", said)
            elif said:
                log.info("conntrack's events: %s", said)

    # -- one event, one count -------------------------------------------------------------

    def opened(self, line: str) -> None:
        """One NEW event: counted for the pod whose address opened it. A pod's first
        connections can come before the watch tells its address: those wait a while, and
        are counted when it does."""
        pods = self.pods()
        now = time.monotonic()
        with self.lock:
            for entry in flows.iter_entries(line):
                if entry.flow.protocol not in accounting.COUNTED:
                    continue
                source = pods.by_ip.get(entry.flow.src)
                if source is not None:
                    self._add_opened(entry.flow, source, now)
                else:
                    self.pending.append((now, entry.flow))
            if pods.version != self.seen_version:
                self.seen_version = pods.version
                waiting, self.pending = list(self.pending), collections.deque(maxlen=2048)
                for at, flow in waiting:
                    source = pods.by_ip.get(flow.src)
                    if source is not None:
                        self._add_opened(flow, source, now)
                    elif now - at < PENDING_SECONDS:
                        self.pending.append((at, flow))

    def _add_opened(self, flow: flows.Flow, source: Source, now: float) -> None:
        self.metrics.add(self.ledger.opened(flow, source, now))
        for pod, port in self.ledger.unlabelled:
            self.metrics.forget(pod, port)
        self.ledger.unlabelled.clear()

    def count(self) -> None:
        """The SYN counting rules brought in line with the node's pods and read; the
        conntrack table listed for bytes and what stays unanswered."""
        began = time.monotonic()
        pods = self.pods()
        placed = accounting.read_counts(
            self.iptables("-t", "raw", "-S", accounting.COUNT_CHAIN, "-v").stdout
        )
        wanted = {
            source.comment: (source, accounting.count_rule(source, ip))
            for ip, source in pods.by_ip.items()
            if _ipv4(ip)
        }
        for comment, (spec, _) in placed.items():
            if comment not in wanted or wanted[comment][1] != spec:
                self.iptables("-t", "raw", "-D", accounting.COUNT_CHAIN, *spec, check=False)
        fresh = []
        for comment, (source, spec) in wanted.items():
            if comment not in placed or placed[comment][0] != spec:
                added = self.iptables("-t", "raw", "-A", accounting.COUNT_CHAIN, *spec, check=False)
                if added.returncode == 0:
                    fresh.append(source)
                else:  # one pod's rule, not the whole count
                    log.warning("SYN rule for %s: %s", comment, added.stderr.strip()[:200])
        counts = {
            wanted[c][0]: packets
            for c, (spec, packets) in placed.items()
            if c in wanted and wanted[c][1] == spec
        }
        listed = self.run(["conntrack", "-L"], capture_output=True, text=True, check=False)
        # Bytes and what stays unanswered are this thread's alone: the events' thread must
        # not wait on a long listing.
        self.metrics.add(self.ledger.account(flows.iter_entries(listed.stdout), pods.by_ip))
        with self.lock:
            for source in fresh:
                self.metrics.add(self.ledger.placed(source))
            self.metrics.add(self.ledger.attempts(counts))
            # The pods present now, not at the start of the count: one that came meanwhile
            # is the events' already.
            for source in self.ledger.forget(self.pods().by_ip.values(), time.monotonic()):
                self.metrics.forget(source)
        self.last_count = time.monotonic()
        self.metrics.counts.observe(self.last_count - began)


def _ipv4(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 4
    except ValueError:
        return False


def _account_bytes() -> None:
    """Byte counts need conntrack accounting, off by default; it applies to new flows."""
    path = Path("/proc/sys/net/netfilter/nf_conntrack_acct")
    try:
        if path.read_text().strip() != "1":
            path.write_text("1")
            log.info("turned nf_conntrack_acct on: flows opened from now on count bytes")
    except OSError as error:
        log.warning("no byte counts: cannot turn nf_conntrack_acct on: %s", error)
