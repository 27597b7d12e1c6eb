"""The local cluster's real node: containerd, runc and a CNI bridge, a kubelet, kube-proxy and
kube-router's NetworkPolicy controller, whose pods are real processes sending real packets.

Everything of the node lives in a network namespace of its own, and the hosts outside
the cluster in another; nothing is routed off the machine::

    host ── brk<id> 10.250.N.1/30 ══ eth0 10.250.N.2 (the node's InternalIP)
      (route 10.244.N.0/24 via the node: the API server reaches pods, as a control plane does)
                                     node namespace brk-<id>-node: cni0 10.244.N.1/24 ── pods
                                     inet0 203.0.113.254 ══ eth0 of brk-<id>-net: 203.0.113.1,
                                       198.51.100.1, and the outside hosts (outside.py)

The node's components reach the API server, which listens on the host's loopback only,
through netns-proxy; the API server reaches the kubelet over the host link. Every file is
under the cluster's directory (``node/``), every name carries the cluster's id, so two
clusters' nodes (the test session's and `breaker demo`'s) run side by side. ``down``
removes every namespace, link, mount, cgroup and process the node made, and puts back
the kernel settings the kubelet changes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from breaker.wait import WaitTimeout, wait_for
from breaker_tooling.localcluster import images, netns, nodeconfig, outside, pki
from breaker_tooling.localcluster.errors import ClusterError, log_tail
from breaker_tooling.localcluster.nodeconfig import NodeSettings
from breaker_tooling.localcluster.processes import Process
from breaker_tooling.localcluster.tools import Toolbox

NAME = pki.REAL_NODE
CNI_BIN = Path("/usr/lib/cni")
REGISTRY = Path("/run/breaker/real-nodes")
# What the kubelet sets on start (container_manager_linux.go), machine-wide: kept as they
# were before the first real node came up, put back when the last one goes.
KERNEL_SETTINGS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
# What a missing command is installed with (cluster/install-system-deps installs them).
PREREQUISITES = {
    "runc": "runc",
    "iptables": "iptables",
    "ipset": "ipset",
    "conntrack": "conntrack",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "ss": "iproute2",
}
BUSYBOX = Path("/bin/busybox")


@dataclass
class RealNode:
    directory: Path  # the cluster's state directory
    apiserver_port: int
    keys: pki.Pki
    say: Callable[[str], None]

    COMPONENTS = (
        "node-outside",
        "node-proxy",
        "containerd",
        "kubelet",
        "kube-proxy",
        "kube-router",
    )

    # -- names --------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return hashlib.sha256(str(self.directory.resolve()).encode()).hexdigest()[:6]

    @property
    def node_ns(self) -> str:
        return f"brk-{self.id}-node"

    @property
    def outside_ns(self) -> str:
        return f"brk-{self.id}-net"

    @property
    def host_link(self) -> str:
        return f"brk{self.id}"

    @property
    def base(self) -> Path:
        return self.directory / "node"

    @property
    def run_dir(self) -> Path:
        """Its sockets and the kubelet's root (short paths: a unix socket's may not pass
        108 bytes, and the cluster's directory may be deep)."""
        return REGISTRY.parent / self.id

    @property
    def report_socket(self) -> Path:
        return self.run_dir / "outside.sock"

    def settings(self) -> NodeSettings:
        index = int((self.base / "index").read_text())
        return NodeSettings(NAME, self.base, index, f"breaker-{self.id}", self.run_dir)

    def process(self, name: str) -> Process:
        return Process(name, self.directory)

    def running(self) -> list[str]:
        return [name for name in self.COMPONENTS if self.process(name).running()]

    # -- up -----------------------------------------------------------------------------

    def up(self, tools: Toolbox, kubectl: Callable[..., str]) -> None:
        """Bring the node up; ``kubectl(*args, input=...)`` runs the cluster's kubectl."""
        began = time.monotonic()
        self._check_prerequisites()
        self.base.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with _machine_lock():
            node = self._claim()
            self._network(node)
        netns.make_cgroup(node.cgroup)
        self._write_files(node)
        self._start(
            "node-outside",
            "serving",
            [
                *netns.inside(self.outside_ns, str(tools["outside"])),
                f"--tunnel={outside.address(outside.TUNNEL)}",
                f"--pool={outside.address(outside.POOL)}",
                f"--dns={outside.address(outside.DNS)}",
                f"--report={self.report_socket}",
            ],
            lambda: self.report_socket.exists(),
        )
        api = f"127.0.0.1:{self.apiserver_port}"
        self._start(
            "node-proxy",
            "carrying the API server",
            [
                str(tools["netns-proxy"]),
                f"--netns={netns.NETNS_DIR / self.node_ns}",
                f"--forward={api}={api}",
            ],
            lambda: "forwards from" in self.process("node-proxy").log.read_text(),
        )
        ctr = [str(tools["ctr"]), f"--address={node.containerd_socket}", "--namespace=k8s.io"]
        self._start(
            "containerd",
            "serving",
            netns.inside(
                self.node_ns,
                str(tools["containerd"]),
                f"--config={self.base / 'containerd' / 'config.toml'}",
            ),
            lambda: subprocess.run([*ctr, "version"], capture_output=True).returncode == 0,
            env={"PATH": f"{tools['containerd'].parent}:/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        self._import_images(tools, ctr)
        kubectl("apply", "-f", "-", input=_yaml(nodeconfig.kube_router_rbac(pki.KUBE_ROUTER.user)))
        self._start(
            "kubelet",
            "Ready",
            netns.inside(
                self.node_ns,
                str(tools["kubelet"]),
                f"--config={self.base / 'kubelet' / 'config.yaml'}",
                f"--kubeconfig={self.base / 'kubelet.kubeconfig'}",
                # Short: the kubelet's own sockets live below (pod-resources, plugins).
                f"--root-dir={self.run_dir / 'kubelet'}",
                f"--cert-dir={self.base / 'kubelet' / 'pki'}",
                f"--hostname-override={NAME}",
                f"--node-ip={node.node_ip}",
                f"--node-labels={nodeconfig.NODE_LABEL}=true",
                # cAdvisor's own containerd client (a flag of cAdvisor's the kubelet still
                # takes): without it cAdvisor looks at the default socket, finds no
                # containers, and /metrics/cadvisor has no per-pod network series.
                f"--containerd={node.containerd_socket}",
                "--v=1",
            ),
            lambda: _node_ready(kubectl),
            timeout=90,
        )
        self._start(
            "kube-proxy",
            "proxying",
            netns.inside(
                self.node_ns,
                str(tools["kube-proxy"]),
                f"--kubeconfig={self.base / 'kube-proxy.kubeconfig'}",
                f"--hostname-override={NAME}",
                f"--cluster-cidr={node.pod_cidr}",
                "--proxy-mode=iptables",
                # Leave the machine's conntrack settings alone.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--metrics-bind-address=127.0.0.1:10249",
                "--healthz-bind-address=127.0.0.1:10256",
            ),
            lambda: self._chain("nat", "KUBE-SERVICES"),
        )
        self._start(
            "kube-router",
            "enforcing NetworkPolicies",
            netns.inside(
                self.node_ns,
                str(tools["kube-router"]),
                f"--kubeconfig={self.base / 'kube-router.kubeconfig'}",
                f"--hostname-override={NAME}",
                # Its NetworkPolicy controller alone: no routing, no service proxy, no CNI.
                "--run-firewall=true",
                "--run-router=false",
                "--run-service-proxy=false",
                "--enable-cni=false",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--health-port=0",
                "--metrics-port=0",
                "--v=1",
            ),
            lambda: self._chain("filter", "KUBE-ROUTER-FORWARD"),
        )
        kubectl("apply", "-f", "-", input=_yaml(nodeconfig.kube_dns(NAME)))
        waited = time.monotonic()
        self.process("kubelet").wait_until(
            lambda: _dns_ready(kubectl), "running the cluster DNS (kube-system/kube-dns)", 90
        )
        self.say(f"  {'cluster dns':<24} ready in {time.monotonic() - waited:.1f}s")
        self.say(
            f"  {'real node':<24} {NAME} up in {time.monotonic() - began:.1f}s: pods in "
            f"{node.pod_cidr}, outside hosts {', '.join(outside.ADDRESSES)}"
        )

    def _start(
        self,
        name: str,
        what: str,
        command: list[str],
        ready: Callable[[], bool],
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> None:
        began = time.monotonic()
        self.process(name).start(command, env=env)
        self.process(name).wait_until(ready, what, timeout)
        self.say(f"  {name:<24} {what} in {time.monotonic() - began:.1f}s")

    def _check_prerequisites(self) -> None:
        missing = sorted(
            {package for command, package in PREREQUISITES.items() if not shutil.which(command)}
        )
        missing += [
            "containernetworking-plugins"
            for plugin in ("bridge", "host-local", "loopback")
            if not (CNI_BIN / plugin).exists()
        ][:1]
        if not BUSYBOX.exists():
            missing.append("busybox-static")
        if missing:
            raise ClusterError(
                "real-node",
                f"missing Debian packages: {' '.join(missing)}; `make system-deps` (or "
                "cluster/install-system-deps) installs them",
            )

    def _claim(self) -> NodeSettings:
        """This node's index (its link and pod addresses), and the kernel settings as they
        were before any real node, kept so the last one down puts them back."""
        REGISTRY.mkdir(parents=True, exist_ok=True)
        before = REGISTRY / "kernel-before.json"
        if not before.exists():
            before.write_text(json.dumps({key: _sysctl(key) for key in KERNEL_SETTINGS}))
        index_file = self.base / "index"
        if not index_file.exists():
            taken = {int(p.read_text() or -1) for p in REGISTRY.glob("[0-9a-f]*")}
            on_host = {str(a.network) for a in netns.host_addresses()}
            start = int(self.id, 16) % 200 + 20
            index = next(
                n
                for n in (start + i % 230 for i in range(230))
                if n not in taken and f"10.250.{n}.0/30" not in on_host
            )
            index_file.write_text(str(index))
        (REGISTRY / self.id).write_text(index_file.read_text())
        return self.settings()

    def _network(self, node: NodeSettings) -> None:
        ip = ("ip",)
        netns.add(self.node_ns)
        netns.add(self.outside_ns)
        if not netns.run("network", *ip, "link", "show", self.host_link, check=False).stdout:
            netns.run(
                "network", *ip, "link", "add", self.host_link, "type", "veth",
                "peer", "name", "eth0", "netns", self.node_ns,
            )  # fmt: skip
            netns.run("network", *ip, "addr", "add", f"{node.host_ip}/30", "dev", self.host_link)
            netns.run("network", *ip, "link", "set", self.host_link, "up")
            inner = ("ip", "-n", self.node_ns)
            netns.run("network", *inner, "addr", "add", f"{node.node_ip}/30", "dev", "eth0")
            netns.run("network", *inner, "link", "set", "eth0", "up")
            netns.run(
                "network", *inner, "link", "add", "inet0", "type", "veth",
                "peer", "name", "eth0", "netns", self.outside_ns,
            )  # fmt: skip
            netns.run("network", *inner, "addr", "add", f"{outside.NODE_SIDE}/24", "dev", "inet0")
            netns.run("network", *inner, "link", "set", "inet0", "up")
            netns.run(
                "network", *inner, "route", "add", outside.RANGES[0], "via", outside.OUTSIDE_GATEWAY
            )
            far = ("ip", "-n", self.outside_ns)
            netns.run(
                "network", *far, "addr", "add", f"{outside.OUTSIDE_GATEWAY}/24", "dev", "eth0"
            )
            netns.run("network", *far, "addr", "add", "198.51.100.1/24", "dev", "eth0")
            for address in outside.ADDRESSES:
                netns.run("network", *far, "addr", "add", f"{address}/32", "dev", "eth0")
            netns.run("network", *far, "link", "set", "eth0", "up")
            netns.run("network", *far, "route", "add", str(node.pod_cidr), "via", outside.NODE_SIDE)
        # The API server reaches the pods as a control plane does (the proxy, webhooks): over
        # the host link, through the node. Gone with the link.
        netns.run(
            "network", "ip", "route", "replace", str(node.pod_cidr),
            "via", node.node_ip, "dev", self.host_link,
        )  # fmt: skip
        # The node routes between its pods and the outside; the host never does.
        netns.sysctl(self.node_ns, "net.ipv4.ip_forward", "1")
        netns.sysctl(self.node_ns, "net.bridge.bridge-nf-call-iptables", "1")

    def _write_files(self, node: NodeSettings) -> None:
        runc = shutil.which("runc")
        assert runc is not None  # checked by _check_prerequisites
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "runc"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "containerd" / "config.toml").write_text(
            nodeconfig.containerd_config(node, Path(runc), CNI_BIN)
        )
        (self.base / "cni" / "net.d" / "10-breaker.conflist").write_text(
            nodeconfig.cni_config(node)
        )
        (self.base / "kubelet" / "config.yaml").write_text(
            yaml.safe_dump(nodeconfig.kubelet_config(node, self.keys.ca_cert))
        )
        (self.base / "resolv.conf").write_text(nodeconfig.resolv_conf())
        server = f"https://127.0.0.1:{self.apiserver_port}"
        for identity, file in (
            (pki.KUBELET, "kubelet.kubeconfig"),
            (pki.KUBE_PROXY, "kube-proxy.kubeconfig"),
            (pki.KUBE_ROUTER, "kube-router.kubeconfig"),
        ):
            self.keys.write_kubeconfig(identity, server, self.base / file)

    def _import_images(self, tools: Toolbox, ctr: list[str]) -> None:
        began = time.monotonic()
        programs = {name: tools[name] for name in ("pause", "agent", "dnsd")}
        tar = self.base / "images.tar"
        images.node_images(programs, BUSYBOX, tar)
        result = subprocess.run(
            [*ctr, "images", "import", str(tar)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ClusterError("containerd", f"importing {tar} failed: {result.stderr.strip()}")
        self.say(
            f"  {'images':<24} {images.PAUSE_IMAGE}, {images.WORKLOAD_IMAGE} imported in "
            f"{time.monotonic() - began:.1f}s"
        )

    def _chain(self, table: str, chain: str) -> bool:
        command = netns.inside(self.node_ns, "iptables", "-t", table, "-S", chain)
        return subprocess.run(command, capture_output=True).returncode == 0

    # -- down ---------------------------------------------------------------------------

    def down(self, kubectl: Callable[..., str] | None) -> list[str]:
        """Remove everything the node made; the components that were running."""
        index_file = self.base / "index"
        if not index_file.exists() and not netns.exists(self.node_ns):
            return []
        if kubectl is not None and self.process("kubelet").running():
            self._drain(kubectl)
        stopped = [n for n in reversed(self.COMPONENTS) if self.process(n).stop(timeout=10)]
        node = self.settings() if index_file.exists() else None
        # What the components left: shims, containers, mounts, pod namespaces.
        netns.kill_matching(["containerd-shim", str(self.run_dir)])
        if node is not None and node.runc_root.is_dir():
            listed = subprocess.run(
                ["runc", f"--root={node.runc_root}", "list", "-q"], capture_output=True, text=True
            )
            for container in listed.stdout.split():
                subprocess.run(
                    ["runc", f"--root={node.runc_root}", "delete", "--force", container],
                    capture_output=True,
                )
        netns.unmount_under(self.base)
        netns.unmount_under(self.run_dir)
        if node is not None:
            for pod in netns.pods_netns(node.pod_cidr):
                netns.delete(pod)
        netns.delete(self.node_ns)
        netns.delete(self.outside_ns)
        if node is not None:
            stuck = netns.remove_cgroup(node.cgroup)
            if stuck:
                self.say(f"  cgroups still in use, left: {', '.join(stuck)}")
        shutil.rmtree(self.run_dir, ignore_errors=True)
        with _machine_lock():
            self._release()
        netns.remove_if_empty(
            [
                Path("/run/containerd/s"),
                Path("/run/containerd"),
                Path("/var/lib/cni/results"),
                Path("/var/lib/cni"),
            ]
        )
        if kubectl is not None:
            with contextlib.suppress(ClusterError):
                kubectl("delete", "node", NAME, "--ignore-not-found", "--wait=false")
        return stopped

    def _drain(self, kubectl: Callable[..., str]) -> None:
        """Stop the pods through the kubelet first, so the CNI and containerd clean up."""
        with contextlib.suppress(ClusterError):
            kubectl("cordon", NAME)
            kubectl(
                "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={NAME}",
                "--grace-period=0", "--force", "--wait=false",
            )  # fmt: skip
        node = self.settings()
        ctr = [
            str(self.directory / "bin" / "ctr"),
            f"--address={node.containerd_socket}",
            "--namespace=k8s.io",
        ]

        def none_left() -> bool:
            listed = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True)
            return listed.returncode != 0 or not listed.stdout.strip()

        with contextlib.suppress(WaitTimeout):  # best effort: the shutdown goes on regardless
            wait_for(none_left, "containerd's tasks to end", 30, interval=0.5)

    def _release(self) -> None:
        (REGISTRY / self.id).unlink(missing_ok=True)
        before = REGISTRY / "kernel-before.json"
        others = [p for p in REGISTRY.glob("[0-9a-f]*") if netns.exists(f"brk-{p.name}-node")]
        if others or not before.exists():
            return
        for key, value in json.loads(before.read_text()).items():
            with contextlib.suppress(ClusterError):
                netns.sysctl(None, key, value)
        before.unlink()

    # -- for tests and the demo -----------------------------------------------------------

    def pod_netns(self, pod_ip: str) -> str:
        """The network namespace the CNI made for the pod with this address."""
        import ipaddress

        address = ipaddress.IPv4Address(pod_ip)
        for name in netns.pods_netns(self.settings().pod_cidr):
            if address in netns.addresses_in(name):
                return name
        raise ClusterError("real-node", f"no pod network namespace holds {pod_ip}")

    def probe(self, pod_ip: str, *args: str) -> dict[str, Any]:
        """`agent probe ARGS` from inside the pod's network namespace: its packets take the
        pod's own path through the node's bridge, kube-proxy and kube-router."""
        agent = self.directory / "bin" / "agent"
        command = netns.inside(self.pod_netns(pod_ip), str(agent), "probe", *args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
        try:
            found: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError:
            raise ClusterError(
                "real-node", f"probe {' '.join(args)}: {result.stderr.strip()}"
            ) from None
        return found

    def outside(self) -> outside.Report:
        return outside.report(self.report_socket)

    def agent_command(self, metrics_port: int = 0) -> list[str]:
        """`breaker node-agent` for this node, inside its network namespace (as the chart's
        DaemonSet runs on the host network); the caller sets KUBECONFIG. With a metrics
        port, it serves on the node's address, which the machine's Prometheus reaches
        (``metrics_target``)."""
        return netns.inside(
            self.node_ns,
            sys.executable,
            "-m",
            "breaker.cli",
            "node-agent",
            f"--node={NAME}",
            f"--cluster-dns={nodeconfig.CLUSTER_DNS}",
            f"--netns-dir={netns.NETNS_DIR}",
            f"--metrics-port={metrics_port}",
            f"--metrics-address={self.settings().node_ip}",
        )

    def metrics_target(self, metrics_port: int) -> str:
        """Where the machine's Prometheus scrapes the node agent's /metrics."""
        return f"{self.settings().node_ip}:{metrics_port}"

    def cut_rules(self) -> list[str]:
        """The drops a node agent has in place on this node (its raw-table chain)."""
        listed = subprocess.run(
            netns.inside(self.node_ns, "iptables", "-t", "raw", "-S", "BREAKER-CUT"),
            capture_output=True,
            text=True,
        )
        return [line for line in listed.stdout.splitlines() if line.startswith("-A ")]

    def logs(self) -> str:
        return "\n".join(f"{n}: {log_tail(self.process(n).log)}" for n in self.COMPONENTS)


def _sysctl(key: str) -> str:
    return Path("/proc/sys", *key.split(".")).read_text().strip()


def _yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def _node_ready(kubectl: Callable[..., str]) -> bool:
    node = json.loads(kubectl("get", "node", NAME, "-o", "json"))
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _dns_ready(kubectl: Callable[..., str]) -> bool:
    found = json.loads(kubectl("get", "deployment", "-n", "kube-system", "kube-dns", "-o", "json"))
    return bool((found.get("status") or {}).get("availableReplicas"))


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """One real node at a time claims addresses or puts kernel settings back."""
    REGISTRY.mkdir(parents=True, exist_ok=True)
    with (REGISTRY.parent / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
