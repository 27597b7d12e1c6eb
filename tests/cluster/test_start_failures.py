"""Start-up failures stop everything that was started and say which component, what and where."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from breaker_tooling.localcluster import ClusterError, LocalCluster, netns
from breaker_tooling.localcluster.cluster import Ports
from breaker_tooling.localcluster.paths import repo_root
from breaker_tooling.localcluster.realnode import RealNode
from breaker_tooling.localcluster.tools import Toolbox, ensure_built


def test_a_component_that_fails_stops_the_rest_and_names_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A second cluster on other ports, whose scheduler is given a flag it does not know.
    offset = 700
    ports = Ports(**{name: port + offset for name, port in Ports().__dict__.items()})
    cluster = LocalCluster(directory=tmp_path / "cluster", ports=ports, say=lambda _m: None)

    def broken_scheduler(self: LocalCluster, tools: Toolbox) -> Any:
        self.process("kube-scheduler").start([str(tools["kube-scheduler"]), "--no-such-flag"])
        return lambda: False

    monkeypatch.setattr(LocalCluster, "_start_scheduler", broken_scheduler)
    with pytest.raises(ClusterError) as failure:
        cluster.up()

    message = str(failure.value)
    assert message.startswith("kube-scheduler: exited before healthy")
    assert str(cluster.process("kube-scheduler").log) in message
    assert "unknown flag: --no-such-flag" in message
    # What had started (etcd, the API server, the controller manager) was stopped again.
    assert not any(cluster.process(name).running() for name in cluster.COMPONENTS)

    cluster.down()
    assert not cluster.directory.exists()


def test_a_real_node_that_fails_names_its_log_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kubelet that will not start: the cluster stops, and every namespace, link,
    cgroup, mount and process the real node made is gone."""
    offset = 800
    ports = Ports(**{name: port + offset for name, port in Ports().__dict__.items()})
    cluster = LocalCluster(directory=tmp_path / "cluster", ports=ports, say=lambda _m: None)
    node = cluster.real_node
    original = RealNode._start

    def broken_kubelet(
        self: RealNode, name: str, what: str, command: list[str], *a: Any, **k: Any
    ) -> None:
        if name == "kubelet":
            command = [*command, "--no-such-flag"]
        original(self, name, what, command, *a, **k)

    monkeypatch.setattr(RealNode, "_start", broken_kubelet)
    try:
        with pytest.raises(ClusterError) as failure:
            cluster.up()
    except BaseException:
        cluster.down()  # it came up after all (BREAKER_CLUSTER_REAL_NODE=0, say): stop it
        raise
    message = str(failure.value)
    assert message.startswith("kubelet: exited before Ready"), message
    assert str(cluster.process("kubelet").log) in message
    assert "unknown flag: --no-such-flag" in message
    assert not any(cluster.process(name).running() for name in cluster.components())
    # Nothing of the node is left on the machine.
    assert not netns.exists(node.node_ns)
    assert not netns.exists(node.outside_ns)
    assert (
        node.host_link
        not in subprocess.run(
            ["ip", "-br", "link"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not [h for h in netns.cgroup_hierarchies() if (h / f"breaker-{node.id}").exists()]
    assert not netns.mounts_under(cluster.directory)
    cluster.down()
    assert not cluster.directory.exists()


def test_kind_config_is_a_valid_kind_v1alpha4_cluster(tmp_path: Path) -> None:
    checker = str(ensure_built(say=lambda _m: None)["kind-config-check"])
    config = repo_root() / "kind-config.yaml"
    result = subprocess.run([checker, str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "1 control-plane and 2 worker nodes" in result.stdout

    # The checker is strict like kind: a misspelt field is refused, naming it.
    broken = tmp_path / "kind-config.yaml"
    broken.write_text(config.read_text().replace("serviceSubnet", "serviceSubnets"))
    result = subprocess.run([checker, str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "serviceSubnets" in result.stderr
