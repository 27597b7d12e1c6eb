"""Objects the size real clusters have: a training pod as the Job controller, the scheduler
and the kubelet leave it (two containers, twenty environment variables, five volumes,
managedFields from three writers, the status of two running containers), and a GPU node
as its kubelet reports it (forty images, its labels, its conditions).

The fleet bench (``fleet.py --realistic``) creates its Jobs from ``pod_template`` and its
kwok nodes from ``node``, so that the API server adds what it adds to real ones; the unit
tests run the operator's index functions on ``pod`` and ``node``. Run it for the sizes:

    .venv/bin/python bench/realistic.py
"""

from __future__ import annotations

import gc
import json
import sys
import uuid
from typing import Any

ENV = 20
IMAGES = 40
STAMP = "2026-12-07T10:00:00Z"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _uid(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))))


def _env(n: int) -> list[dict[str, Any]]:
    names = [
        "NCCL_DEBUG",
        "NCCL_IB_DISABLE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "OMP_NUM_THREADS",
        "PYTHONUNBUFFERED",
        "HF_HOME",
        "WANDB_PROJECT",
        "WANDB_MODE",
        "TORCH_DISTRIBUTED_DEBUG",
        "CUDA_DEVICE_MAX_CONNECTIONS",
        "CHECKPOINT_DIR",
        "DATASET_URI",
        "RUN_ID",
        "LEARNING_RATE",
        "BATCH_SIZE",
        "SEED",
    ]
    found: list[dict[str, Any]] = []
    for i in range(n):
        name = names[i % len(names)] + ("" if i < len(names) else f"_{i}")
        if name == "RANK":
            found.append(
                {
                    "name": name,
                    "valueFrom": {
                        "fieldRef": {
                            "apiVersion": "v1",
                            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']",
                        }
                    },
                }
            )
        else:
            found.append({"name": name, "value": f"/mnt/{name.lower()}/value-{i}"})
    return found


def containers(gpus: int = 1) -> list[dict[str, Any]]:
    trainer = {
        "name": "trainer",
        "image": "registry.example/ml/trainer:2026.11.3-cuda12.6",
        "command": ["torchrun"],
        "args": [
            "--nnodes=1",
            "--nproc-per-node=1",
            "train.py",
            "--config",
            "/etc/run/config.yaml",
        ],
        "env": _env(ENV),
        "ports": [{"containerPort": 29500, "name": "rendezvous", "protocol": "TCP"}],
        "resources": {
            "limits": {"nvidia.com/gpu": str(gpus), "memory": "64Gi", "cpu": "8"},
            "requests": {"nvidia.com/gpu": str(gpus), "memory": "48Gi", "cpu": "6"},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": "/data", "readOnly": True},
            {"name": "checkpoints", "mountPath": "/checkpoints"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "run-config", "mountPath": "/etc/run"},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "periodSeconds": 30,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
            "successThreshold": 1,
        },
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    shipper = {
        "name": "log-shipper",
        "image": "registry.example/infra/log-shipper:1.9.2",
        "env": _env(5),
        "resources": {
            "limits": {"memory": "256Mi", "cpu": "200m"},
            "requests": {"memory": "128Mi", "cpu": "100m"},
        },
        "volumeMounts": [{"name": "checkpoints", "mountPath": "/checkpoints", "readOnly": True}],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    return [trainer, shipper]


def volumes() -> list[dict[str, Any]]:
    return [
        # The node's dataset cache (a claim would keep the fleet bench's pods unscheduled).
        {"name": "data", "hostPath": {"path": "/mnt/datasets", "type": "Directory"}},
        {"name": "checkpoints", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}},
        {"name": "run-config", "configMap": {"name": "run-config", "defaultMode": 420}},
    ]


def pod_template(gpus: int = 1) -> dict[str, Any]:
    """A Job's pod template of that size (the API server adds the token volume, defaults,
    managedFields)."""
    return {
        "metadata": {"labels": {"app.kubernetes.io/name": "trainer", "team": "research"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": containers(gpus),
            "volumes": volumes(),
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }


def _fields(paths: list[str]) -> dict[str, Any]:
    """A managedFields fieldsV1 tree with these dotted paths."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        for part in path.split("."):
            node = node.setdefault(f"f:{part}", {})
    return tree


def pod(namespace: str, name: str, node: str, index: int = 0, gpus: int = 1) -> dict[str, Any]:
    """A running training pod of a Job, as the API server would return it."""
    job = name.rsplit("-", 1)[0]
    job_uid = _uid(namespace, "job", job)
    env_paths = [f"spec.containers.trainer.env.{e['name']}" for e in _env(ENV)]
    spec = pod_template(gpus)["spec"]
    spec["volumes"].append(
        {
            "name": "kube-api-access-x7k2p",
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {
                                        "apiVersion": "v1",
                                        "fieldPath": "metadata.namespace",
                                    },
                                }
                            ]
                        }
                    },
                ],
            },
        }
    )
    spec.update(
        nodeName=node,
        serviceAccountName="default",
        serviceAccount="default",
        dnsPolicy="ClusterFirst",
        schedulerName="default-scheduler",
        securityContext={},
        terminationGracePeriodSeconds=30,
        priority=0,
        enableServiceLinks=True,
        preemptionPolicy="PreemptLowerPriority",
    )
    started = [
        {
            "name": c["name"],
            "ready": True,
            "restartCount": 0,
            "started": True,
            "image": c["image"],
            "imageID": f"{c['image']}@sha256:{_uid(c['image']).replace('-', '')}",
            "containerID": f"containerd://{_uid(name, c['name']).replace('-', '')}",
            "state": {"running": {"startedAt": STAMP}},
            "lastState": {},
        }
        for c in spec["containers"]
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "generateName": f"{job}-",
            "namespace": namespace,
            "uid": _uid(namespace, name),
            "resourceVersion": str(100000 + index),
            "creationTimestamp": STAMP,
            "labels": {
                "app.kubernetes.io/name": "trainer",
                "team": "research",
                "batch.kubernetes.io/controller-uid": job_uid,
                "batch.kubernetes.io/job-name": job,
                "controller-uid": job_uid,
                "job-name": job,
            },
            "annotations": {COMPLETION_INDEX: "0"},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job,
                    "uid": job_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "finalizers": ["batch.kubernetes.io/job-tracking"],
            "managedFields": [
                {
                    "manager": "kube-controller-manager",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": STAMP,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields(
                        [
                            "metadata.generateName",
                            "metadata.labels",
                            "metadata.ownerReferences",
                            "metadata.finalizers",
                            *env_paths,
                            "spec.volumes",
                            "spec.tolerations",
                        ]
                    ),
                },
                {
                    "manager": "kube-scheduler",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": STAMP,
                    "subresource": "status",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields(["status.conditions.PodScheduled"]),
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": STAMP,
                    "subresource": "status",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields(
                        [
                            "status.conditions.Ready",
                            "status.conditions.Initialized",
                            "status.conditions.ContainersReady",
                            "status.containerStatuses",
                            "status.hostIP",
                            "status.podIP",
                            "status.podIPs",
                            "status.startTime",
                        ]
                    ),
                },
            ],
        },
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": STAMP}
                for t in (
                    "PodReadyToStartContainers",
                    "Initialized",
                    "Ready",
                    "ContainersReady",
                    "PodScheduled",
                )
            ],
            "hostIP": "10.0.3.17",
            "hostIPs": [{"ip": "10.0.3.17"}],
            "podIP": f"10.244.{index // 250 % 250}.{index % 250 + 2}",
            "podIPs": [{"ip": f"10.244.{index // 250 % 250}.{index % 250 + 2}"}],
            "startTime": STAMP,
            "containerStatuses": started,
            "qosClass": "Burstable",
        },
    }


def node(name: str, gpus: int = 8) -> dict[str, Any]:
    """A GPU node as its kubelet (and the GPU operator's labels) leave it."""
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": "p5.48xlarge",
        "topology.kubernetes.io/region": "region-1",
        "topology.kubernetes.io/zone": "region-1a",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.memory": "81559",
        "nvidia.com/cuda.driver.major": "560",
        "nvidia.com/mig.strategy": "single",
        "feature.node.kubernetes.io/network-sriov.capable": "true",
        "node-role.example/gpu": "",
        "pool": "training",
    }
    images = [
        {
            "names": [
                f"registry.example/ml/image-{i}@sha256:{_uid('image', i).replace('-', '')}",
                f"registry.example/ml/image-{i}:v{i}.0",
            ],
            "sizeBytes": 1_000_000_000 + i,
        }
        for i in range(IMAGES)
    ]
    capacity = {
        "cpu": "192",
        "memory": "2113389568Ki",
        "nvidia.com/gpu": str(gpus),
        "pods": "110",
        "ephemeral-storage": "3750000000Ki",
        "hugepages-1Gi": "0",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": _uid("node", name),
            "resourceVersion": "5000",
            "creationTimestamp": STAMP,
            "labels": labels,
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "nfd.node.kubernetes.io/feature-labels": ",".join(sorted(labels)),
                "csi.volume.kubernetes.io/nodeid": json.dumps({"ebs.csi.aws.com": name}),
            },
            "managedFields": [
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": STAMP,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields([f"metadata.labels.{k}" for k in labels]),
                },
                {
                    "manager": "kubelet",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": STAMP,
                    "subresource": "status",
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields(
                        [
                            "status.allocatable",
                            "status.capacity",
                            "status.conditions",
                            "status.images",
                            "status.nodeInfo",
                            "status.addresses",
                            "status.daemonEndpoints",
                        ]
                    ),
                },
                {
                    "manager": "nfd-master",
                    "operation": "Update",
                    "apiVersion": "v1",
                    "time": STAMP,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": _fields(["metadata.annotations.nfd"]),
                },
            ],
        },
        "spec": {
            "podCIDR": "10.244.7.0/24",
            "podCIDRs": ["10.244.7.0/24"],
            "providerID": f"aws:///region-1a/i-{_uid(name)[:17]}",
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        },
        "status": {
            "capacity": capacity,
            "allocatable": {**capacity, "cpu": "191500m", "memory": "2100000000Ki"},
            "conditions": [
                {
                    "type": t,
                    "status": "True" if t == "Ready" else "False",
                    "reason": f"Kubelet{t}",
                    "message": f"kubelet says {t}",
                    "lastHeartbeatTime": STAMP,
                    "lastTransitionTime": STAMP,
                }
                for t in (
                    "MemoryPressure",
                    "DiskPressure",
                    "PIDPressure",
                    "Ready",
                    "NetworkUnavailable",
                )
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.3.17"},
                {"type": "Hostname", "address": name},
                {"type": "InternalDNS", "address": f"{name}.region-1.compute.internal"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": _uid("m", name).replace("-", ""),
                "systemUUID": _uid("s", name),
                "bootID": _uid("b", name),
                "kernelVersion": "6.1.0-27-amd64",
                "osImage": "Debian GNU/Linux 12",
                "containerRuntimeVersion": "containerd://2.1.4",
                "kubeletVersion": "v1.36.3",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images,
        },
    }


def deep_bytes(root: object) -> int:
    size, stack, seen = 0, [root], set()
    while stack:
        found = stack.pop()
        if id(found) in seen:
            continue
        seen.add(id(found))
        size += sys.getsizeof(found)
        stack.extend(gc.get_referents(found))
    return size


def main() -> int:
    sys.path.insert(0, "operator")
    from breaker import trimming

    heads = ("object", "JSON KB", "Python KB", "trimmed JSON KB", "trimmed Python KB")
    print(f"{heads[0]:<8} {heads[1]:>8} {heads[2]:>10} {heads[3]:>16} {heads[4]:>18}")
    for kind, (group, plural, body) in {
        "pod": ("", "pods", pod("team-a", "job-7-x2k9q", "gpu-node-1")),
        "node": ("", "nodes", node("gpu-node-1")),
    }.items():
        raw = json.dumps(body)
        whole = json.loads(raw)
        trimmed = json.loads(raw)
        trimming.trim(group, plural, trimmed)
        print(
            f"{kind:<8} {len(raw) / 1024:>8.1f} {deep_bytes(whole) / 1024:>10.1f} "
            f"{len(json.dumps(trimmed)) / 1024:>16.1f} {deep_bytes(trimmed) / 1024:>18.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
