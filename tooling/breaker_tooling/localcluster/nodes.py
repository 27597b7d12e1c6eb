"""The local cluster's GPU nodes as the CLI names them: light enough for any command to
import (the cluster builder, with its certificates and processes, loads only when used)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from breaker.constants import GPU_RESOURCE

NODE_LABEL = "breaker.dev/local-gpu-node"


@dataclass(frozen=True)
class GpuNodes:
    """The kwok nodes to register: every one alike."""

    count: int = 4
    gpus: int = 8
    cpu: str = "64"
    memory: str = "512Gi"
    pods: int = 110
    product: str = "NVIDIA-H100-80GB-HBM3"

    def names(self) -> list[str]:
        return [f"gpu-node-{index}" for index in range(self.count)]

    def manifest(self, name: str) -> dict[str, Any]:
        capacity = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": str(self.pods),
            "ephemeral-storage": "1Ti",
            GPU_RESOURCE: str(self.gpus),
        }
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {
                    NODE_LABEL: "true",
                    "type": "kwok",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    # What NVIDIA's GPU feature discovery labels a real GPU node with.
                    "nvidia.com/gpu.present": "true",
                    "nvidia.com/gpu.count": str(self.gpus),
                    "nvidia.com/gpu.product": self.product,
                },
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }


def node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
