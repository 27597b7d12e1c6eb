"""The real node's pure parts: its configuration files and its images."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

from breaker_tooling.localcluster import images, nodeconfig
from breaker_tooling.localcluster.nodeconfig import NodeSettings

NODE = NodeSettings(
    "real-node-0", Path("/state/node"), 49, "breaker-abc123", Path("/run/breaker/x")
)


def test_two_clusters_nodes_never_share_addresses_or_state() -> None:
    other = NodeSettings("real-node-0", Path("/other/node"), 50, "breaker-def456", Path("/run/y"))
    assert NODE.link != other.link
    assert NODE.pod_cidr != other.pod_cidr
    assert (NODE.host_ip, NODE.node_ip) == ("10.250.49.1", "10.250.49.2")
    assert str(NODE.pod_cidr) == "10.244.49.0/24"


def test_containerd_is_configured_under_the_nodes_own_paths() -> None:
    config = tomllib.loads(
        nodeconfig.containerd_config(NODE, Path("/usr/sbin/runc"), Path("/usr/lib/cni"))
    )
    assert config["version"] == 3
    assert config["root"].startswith("/state/node/")
    assert config["state"].startswith("/state/node/")
    assert config["grpc"]["address"] == "/run/breaker/x/containerd.sock"
    plugins = config["plugins"]
    runtime = plugins["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True
    assert runtime["cni"]["conf_dir"] == "/state/node/cni/net.d"
    options = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert options["Root"] == "/state/node/runc"
    assert options["SystemdCgroup"] is False
    pinned = plugins["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"]
    assert pinned == images.PAUSE_IMAGE


def test_the_bridge_does_not_masquerade_and_keeps_its_addresses_in_the_nodes_range() -> None:
    (bridge,) = json.loads(nodeconfig.cni_config(NODE))["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.49.0/24"}]]
    assert bridge["ipam"]["dataDir"] == "/state/node/cni/ipam"


def test_the_kubelet_runs_on_cgroup_v1_here_and_never_collects_images() -> None:
    config = nodeconfig.kubelet_config(NODE, Path("/state/pki/ca.crt"))
    assert config["failCgroupV1"] is False
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["cgroupRoot"] == "/breaker-abc123"
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["registerWithTaints"] == [nodeconfig.TAINT]
    assert config["address"] == "10.250.49.2"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert nodeconfig.resolv_conf() == "nameserver 203.0.113.53\n"


def test_the_cluster_dns_is_kube_dns_in_kube_system_on_the_real_node() -> None:
    service, deployment = nodeconfig.kube_dns("real-node-0")
    assert service["spec"]["clusterIP"] == nodeconfig.CLUSTER_DNS
    assert service["metadata"]["namespace"] == "kube-system"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    assert pod["spec"]["tolerations"] == [nodeconfig.TOLERATION]
    assert "--upstream" in pod["spec"]["containers"][0]["command"]


def test_the_images_are_one_reproducible_oci_layout(tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_bytes(b"\x7fELF not really")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"busybox")
    first = images.node_images({"pause": program, "agent": program}, busybox, tmp_path / "a.tar")
    again = images.node_images({"pause": program, "agent": program}, busybox, tmp_path / "b.tar")
    assert first == again, "the same programs give the same digests"
    assert set(first) == {images.PAUSE_IMAGE, images.WORKLOAD_IMAGE}
    with tarfile.open(tmp_path / "a.tar") as archive:
        index = json.load(archive.extractfile("index.json"))  # type: ignore[arg-type]
        names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
        assert names == [images.PAUSE_IMAGE, images.WORKLOAD_IMAGE]
        manifests = [
            json.load(archive.extractfile(f"blobs/sha256/{m['digest'][7:]}"))  # type: ignore[arg-type]
            for m in index["manifests"]
        ]
        layers = {m["layers"][0]["digest"] for m in manifests}
        assert len(layers) == 1, "one layer shared by both images"
        configs = [
            json.load(archive.extractfile(f"blobs/sha256/{m['config']['digest'][7:]}"))  # type: ignore[arg-type]
            for m in manifests
        ]
        entrypoints = [c["config"]["Entrypoint"] for c in configs]
        assert entrypoints == [["/pause"], ["/agent", "idle"]]
        layer = archive.extractfile(f"blobs/sha256/{layers.pop()[7:]}")
        assert layer is not None
        with tarfile.open(fileobj=layer) as files:
            assert {"pause", "agent", "bin/busybox", "bin/sh"} <= set(files.getnames())
