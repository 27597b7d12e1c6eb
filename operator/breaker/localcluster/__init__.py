"""The local control plane: a real Kubernetes cluster on loopback, for development and CI.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler are built from the public
Go modules (see ``cluster/go``), kwok stands in for the kubelets of GPU nodes, and Debian's
Prometheus scrapes whatever the tests and the simulator register. This package may start
and stop processes, write under its state directory and its build cache, and talk to the
cluster it started; nothing else.
"""

from breaker.localcluster.cluster import LocalCluster
from breaker.localcluster.errors import ClusterError

__all__ = ["ClusterError", "LocalCluster"]
