"""The local control plane: a real Kubernetes cluster on loopback, for development and CI.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from the public
Go modules (see ``cluster/go``), kwok stands in for the kubelets of GPU nodes, and Debian's
Prometheus scrapes whatever the tests and the simulator register. This package may start
and stop processes, write under its state directory and its build cache, and talk to the
cluster it started; nothing else.
"""

from typing import TYPE_CHECKING, Any

from breaker_tooling.localcluster.errors import ClusterError

if TYPE_CHECKING:
    from breaker_tooling.localcluster.cluster import LocalCluster

__all__ = ["ClusterError", "LocalCluster"]


def __getattr__(name: str) -> Any:
    # Loaded when first named: `breaker run` imports the CLI, which must not load the
    # cluster builder (and `cryptography`) for the commands that never use it.
    if name == "LocalCluster":
        from breaker_tooling.localcluster.cluster import LocalCluster

        return LocalCluster
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
