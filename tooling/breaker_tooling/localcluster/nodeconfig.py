"""The real node's configuration files and manifests, rendered from its settings. Pure.

containerd's (version 3: the CRI settings live in ``io.containerd.cri.v1.images``,
``io.containerd.cri.v1.runtime`` and ``io.containerd.grpc.v1.cri``), the CNI bridge's,
the kubelet's, and what the node runs for the cluster: the DNS service and kube-router's
RBAC. Every path is under the node's own directory, so two clusters' nodes never share
state, and nothing is written under /etc or /var/lib.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breaker_tooling.localcluster import images, outside

NODE_LABEL = "breaker.dev/real-node"
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}
CLUSTER_DNS = "10.96.0.10"  # kube-system/kube-dns, in the API server's service range
KUBE_ROUTER_ROLE = "breaker:kube-router"


@dataclass(frozen=True)
class NodeSettings:
    name: str  # the Node's name
    base: Path  # the node's directory: every file it writes lives below
    index: int  # picks its link and pod addresses: two clusters' nodes never overlap
    cgroup: str  # its cgroup root, in every hierarchy
    run: Path  # its sockets: short paths (a unix socket's may not pass 108 bytes)

    @property
    def link(self) -> ipaddress.IPv4Network:
        """Between the host (first address) and the node's namespace (second, its IP)."""
        return ipaddress.IPv4Network(f"10.250.{self.index}.0/30")

    @property
    def host_ip(self) -> str:
        return str(self.link.network_address + 1)

    @property
    def node_ip(self) -> str:
        return str(self.link.network_address + 2)

    @property
    def pod_cidr(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.244.{self.index}.0/24")

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"


def containerd_config(node: NodeSettings, runc: Path, cni_bin: Path) -> str:
    base = node.base / "containerd"
    cri_images = '[plugins."io.containerd.cri.v1.images"]'
    cri_runtime = '[plugins."io.containerd.cri.v1.runtime"]'
    runc_runtime = '[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]'
    return "\n".join(
        [
            "version = 3",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            "[grpc]",
            f'  address = "{node.containerd_socket}"',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{base / "opt"}"',
            cri_images,
            '  snapshotter = "overlayfs"',
            f"{cri_images[:-1]}.pinned_images]",
            # The kubelet's sandbox: made here, never pulled.
            f'    sandbox = "{images.PAUSE_IMAGE}"',
            cri_runtime,
            # This machine's capability set lacks CAP_SYS_RESOURCE: an oom_score_adj below
            # containerd's own is refused, and runc fails without this.
            "  restrict_oom_score_adj = true",
            f"{cri_runtime[:-1]}.cni]",
            f'    bin_dirs = ["{cni_bin}"]',
            f'    conf_dir = "{node.base / "cni" / "net.d"}"',
            runc_runtime,
            '  runtime_type = "io.containerd.runc.v2"',
            f"{runc_runtime[:-1]}.options]",
            f'    BinaryName = "{runc}"',
            f'    Root = "{node.runc_root}"',
            "    SystemdCgroup = false",
            '[plugins."io.containerd.grpc.v1.cri"]',
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "",
        ]
    )


def cni_config(node: NodeSettings) -> str:
    """A bridge in the node's namespace, addresses from its pod range, no masquerade: the
    outside hosts see the pod's own address."""
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "breaker",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": str(node.pod_cidr)}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(node.base / "cni" / "ipam"),
                    },
                }
            ],
        },
        indent=2,
    )


def kubelet_config(node: NodeSettings, client_ca: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.node_ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        # cgroup v1 here: deprecated in 1.35, allowed when asked for; our own root in
        # every hierarchy, with cgroupfs (no systemd on these machines).
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup}",
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "clusterDNS": [CLUSTER_DNS],
        "clusterDomain": "cluster.local",
        # Pods that use the node's resolver ask the outside DNS host, never the machine's.
        "resolvConf": str(node.base / "resolv.conf"),
        "podLogsDir": str(node.base / "kubelet" / "pod-logs"),
        # Images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "registerWithTaints": [TAINT],
        "maxPods": 40,
        "serializeImagePulls": False,
    }


def resolv_conf() -> str:
    return f"nameserver {outside.DNS[0]}\n"


def kube_dns(node: str) -> list[dict[str, Any]]:
    """The cluster DNS on the real node: kube-system/kube-dns at CLUSTER_DNS, forwarding
    what it does not own to the outside DNS host, as a cluster's resolver forwards."""
    labels = {"k8s-app": "kube-dns"}
    upstream = outside.address(outside.DNS)
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": CLUSTER_DNS,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "nodeSelector": {NODE_LABEL: "true"},
                        "tolerations": [TOLERATION],
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": "dnsd",
                                "image": images.WORKLOAD_IMAGE,
                                "command": ["/dnsd", "--listen", ":53", "--upstream", upstream],
                                "ports": [
                                    {"containerPort": 53, "protocol": "UDP"},
                                    {"containerPort": 53, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "tcpSocket": {"port": 53},
                                    "periodSeconds": 2,
                                },
                            }
                        ],
                    },
                },
            },
        },
    ]


def kube_router_rbac(user: str) -> list[dict[str, Any]]:
    """What kube-router's NetworkPolicy controller reads, and nothing it does not."""
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": KUBE_ROUTER_ROLE},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": KUBE_ROUTER_ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": KUBE_ROUTER_ROLE,
            },
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        },
    ]
