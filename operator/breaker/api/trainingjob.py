"""TrainingJob: a GPU training run, queued for GPUs and run as an Indexed batch/v1 Job."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from breaker.api.common import ApiModel, Condition, KubeObject, LabelSelector

MAX_REPLICAS = 1024
MAX_GPUS_PER_REPLICA = 16
MAX_NAME = 50  # the Job and its pods are named after the TrainingJob, within 63 characters


def immutable(field: str) -> JsonDict:
    """A CEL transition rule: the field keeps the value it was created with."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": "self == oldSelf",
                "message": f"{field} cannot change once the job exists; create a new TrainingJob",
            }
        ]
    }


class Container(ApiModel):
    """A container of the pod template (any other core/v1 Container field is accepted)."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="The container's name.", min_length=1, max_length=63)
    image: str = Field(description="The container image to run.", min_length=1, max_length=1024)


class PodSpec(ApiModel):
    """A core/v1 PodSpec. breaker adds the GPU request to the first container."""

    model_config = ConfigDict(extra="allow")

    containers: list[Container] = Field(
        min_length=1,
        max_length=32,
        description=(
            "The containers of each replica. The first one is given "
            "nvidia.com/gpu: gpusPerReplica; do not set that resource yourself."
        ),
    )


class TemplateMetadata(ApiModel):
    """Labels and annotations for the pods."""

    labels: dict[str, str] | None = Field(default=None, description="Labels added to every pod.")
    annotations: dict[str, str] | None = Field(
        default=None, description="Annotations added to every pod."
    )


class PodTemplate(ApiModel):
    """The pod that each replica runs."""

    metadata: TemplateMetadata | None = Field(
        default=None, description="Pod labels and annotations."
    )
    spec: PodSpec = Field(description="The pod spec of each replica.")


Protocol = Literal["TCP", "UDP", "SCTP"]


class PortRange(ApiModel):
    """A destination port, or a range of ports with endPort."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.endPort) || self.endPort >= self.port",
                    "message": "endPort must not be below port",
                    "fieldPath": ".endPort",
                }
            ]
        }
    )

    port: int = Field(ge=1, le=65535, description="The destination port (1-65535).")
    end_port: int | None = Field(
        default=None, ge=1, le=65535, description="The last port of a range starting at port."
    )
    protocol: Protocol = Field(default="TCP", description="TCP, UDP or SCTP.")


class CidrPeer(ApiModel):
    """Destinations by address, as in a NetworkPolicy ipBlock."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.except) || self.except.all(e, isCIDR(e) && "
                    "cidr(self.cidr).containsCIDR(e))",
                    "message": "every entry of except must be a CIDR inside cidr",
                    "fieldPath": ".except",
                }
            ]
        }
    )

    cidr: str = Field(
        max_length=43,
        description="Destination addresses in CIDR notation, e.g. 203.0.113.0/24 or 2001:db8::/32.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self)", "message": "must be a CIDR such as 203.0.113.0/24"}
            ]
        },
    )
    except_: list[Annotated[str, Field(max_length=43)]] | None = Field(
        default=None,
        alias="except",
        max_length=32,
        description="CIDRs inside cidr that stay unreachable.",
    )
    ports: list[PortRange] | None = Field(
        default=None, max_length=32, description="Allowed ports; none means every port."
    )


class InClusterPeer(ApiModel):
    """Destinations inside the cluster, by namespace and pod labels."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.namespaceSelector) || has(self.podSelector)",
                    "message": "set namespaceSelector, podSelector or both",
                }
            ]
        }
    )

    namespace_selector: LabelSelector | None = Field(
        default=None,
        description="Namespaces whose pods may be reached; unset means the job's own namespace.",
    )
    pod_selector: LabelSelector | None = Field(
        default=None, description="Pods that may be reached; unset means every pod."
    )
    ports: list[PortRange] | None = Field(
        default=None, max_length=32, description="Allowed ports; none means every port."
    )


class Egress(ApiModel):
    """What the job's pods may legitimately reach. Everything else is denied."""

    dns: bool = Field(
        default=True, description="Allow DNS (UDP and TCP 53) to the cluster's DNS pods."
    )
    cidrs: list[CidrPeer] | None = Field(
        default=None, max_length=64, description="Allowed destinations by address."
    )
    in_cluster: list[InClusterPeer] | None = Field(
        default=None, max_length=64, description="Allowed destinations inside the cluster."
    )


class TrainingJobSpec(ApiModel):
    """What to run, on how many GPUs, and what it may reach."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.queueName) || !self.suspend",
                    "message": (
                        "spec.suspend cannot be set with spec.queueName: Kueue runs this job; "
                        "suspend it through its Kueue Workload (spec.active: false)"
                    ),
                },
                {
                    "rule": "has(self.queueName) == has(oldSelf.queueName)",
                    "message": (
                        "spec.queueName cannot be added or removed once the job exists "
                        "(its Job is Kueue's or breaker's queue's); create a new TrainingJob"
                    ),
                },
            ]
        }
    )

    replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS,
        description=(
            f"Pods that run together (1-{MAX_REPLICAS}); admitted all at once or not at all."
        ),
        json_schema_extra=immutable("replicas"),
    )
    gpus_per_replica: int = Field(
        default=1,
        ge=1,
        le=MAX_GPUS_PER_REPLICA,
        description=f"nvidia.com/gpu for each replica (1-{MAX_GPUS_PER_REPLICA}), all on one node.",
        json_schema_extra=immutable("gpusPerReplica"),
    )
    priority: int = Field(
        default=0,
        ge=-1000,
        le=1000,
        description="Queue order: higher first, then older first (-1000 to 1000).",
    )
    suspend: bool = Field(
        default=False,
        description="Pause the job: its pods stop and its GPUs go back to the queue.",
    )
    queue_name: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description=(
            "Hand queueing to Kueue: the Job is created with Kueue's queue label for this "
            "LocalQueue, Kueue admits it by its quota, and breaker's own queue leaves it "
            "alone. Unset: breaker's queue admits it."
        ),
        json_schema_extra=immutable("queueName"),
    )
    template: PodTemplate = Field(
        description="The pod each replica runs.", json_schema_extra=immutable("template")
    )
    egress: Egress = Field(
        default_factory=Egress,
        description=(
            "The egress allow-list. The job's pods may reach only these destinations "
            "(and DNS unless dns is false); with no allow-list, DNS only."
        ),
        json_schema_extra={"default": {}},
    )


JobState = Literal["Pending", "Queued", "Admitted", "Running", "Suspended", "Succeeded", "Failed"]


class TrainingJobStatus(ApiModel):
    """What the controller observed and did."""

    state: JobState | None = Field(default=None, description="Where the job is in its life.")
    gpus: int | None = Field(default=None, ge=0, description="GPUs the job needs in all.")
    gpus_allocated: int | None = Field(
        default=None, ge=0, description="GPUs held by the job's scheduled pods."
    )
    queue_position: int | None = Field(
        default=None, ge=1, description="1 for the next job to be admitted; unset when not queued."
    )
    nodes: list[str] | None = Field(default=None, description="Nodes the job's pods run on.")
    node_list: str | None = Field(
        default=None, description="The nodes as one comma-separated string, for printing."
    )
    job_name: str | None = Field(default=None, description="The batch/v1 Job that runs it.")
    network_policy: str | None = Field(
        default=None, description="The NetworkPolicy that holds its baseline egress."
    )
    admitted_at: dt.datetime | None = Field(
        default=None, description="When the queue last admitted the job."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status reflects."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description=(
            "Admitted, Queued, Running, Suspended, Succeeded, Failed, and Ready (the summary)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class TrainingJob(KubeObject):
    """A GPU training run, queued until the cluster has GPUs for all its replicas."""

    kind: str = Field(default="TrainingJob", description="TrainingJob")
    spec: TrainingJobSpec = Field(description="What to run and what it may reach.")
    status: TrainingJobStatus | None = Field(default=None, description="Written by the operator.")

    @property
    def gpus(self) -> int:
        return self.spec.replicas * self.spec.gpus_per_replica
