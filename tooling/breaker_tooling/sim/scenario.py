"""The scenario format of `breaker sim`: pods, and what each does when.

```yaml
name: rome-sequence
description: probe the network, open a reverse tunnel, then mine
duration: 90m            # how long the scenario runs
interval: 15s            # how often the exporters sample (DCGM's default is 30s; Hubble's 15s)
start: 2026-01-01T00:00:00Z   # optional: where files start (default: now - duration)
pods:
  - namespace: team-a
    name: rl-agent-0
    node: gpu-node-0
    gpus: 8
    stepCounter: true        # the job exports training_steps_total
    start: 0m                # when the pod appears (default: at the start)
    owner: {kind: Job, name: rl-agent}
    scanFrom: 1              # the first port its scans probe (default 1)
    timeline:
      - {at: 0m, do: train-mixed}
      - {at: 40m, until: 45m, do: internal-scan-slow}
      - {at: 50m, do: reverse-ssh-tunnel}
      - {at: 60m, do: dns-tunnel-slow, every: 5m, lasting: 2m}   # a duty cycle
expect:
  - pod: team-a/rl-agent-0
    trips: true
    from: 40m                # the first bad sample
    within: 5m               # the detection budget from there
```

Each timeline entry runs from ``at`` until ``until`` (or the end); with ``every``, only the
first ``lasting`` of each ``every`` (an attacker who keeps under a ``for``). GPU behaviours
replace one another (the latest started wins); network and host behaviours add up.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from breaker.api.common import DNS_LABEL, ApiModel, Duration, parse_duration

GpuBehaviour = Literal[
    "train-mixed",
    "train-fp32",
    "eval",
    "data-loader-stall",
    "restart-from-checkpoint",
    "mine",
    "mine-while-training",
    "rollout",
    "idle",
]
NetBehaviour = Literal[
    "checkpoint-upload",
    "nccl-allreduce",
    "nccl-ring-join",
    "package-install",
    "git-over-ssh",
    "miner-pool-egress",
    "miner-pool-egress-tls",
    "reverse-ssh-tunnel",
    "tunnel-over-443",
    "internal-scan-trickle",
    "internal-scan-slow",
    "internal-scan-medium",
    "internal-scan-fast",
    "internal-scan-burst",
    "internal-scan-blocked",
    "connection-storm-443",
    "mine-unallocated-gpus",
    "dns-many-names",
    "dns-srv-discovery",
    "dns-mongodb-srv",
    "dns-tunnel-fast",
    "dns-tunnel-slow",
]
GPU_BEHAVIOURS: tuple[str, ...] = GpuBehaviour.__args__  # type: ignore[attr-defined]


class Segment(ApiModel):
    """One behaviour over a span of the scenario."""

    at: Duration = Field(description="When it starts, from the scenario's start.")
    until: Duration | None = Field(default=None, description="When it stops (default: never).")
    do: GpuBehaviour | NetBehaviour = Field(description="The behaviour.")
    every: Duration | None = Field(
        default=None, description="Repeat: on for `lasting` at the start of each `every`."
    )
    lasting: Duration | None = Field(default=None, description="With `every`: how long it is on.")

    @model_validator(mode="after")
    def _cycle(self) -> Segment:
        if (self.every is None) != (self.lasting is None):
            raise ValueError("every and lasting go together")
        if (
            self.every
            and self.lasting
            and parse_duration(self.lasting) > parse_duration(self.every)
        ):
            raise ValueError("lasting must not be longer than every")
        return self

    def active(self, offset: float) -> bool:
        start = parse_duration(self.at).total_seconds()
        end = parse_duration(self.until).total_seconds() if self.until else float("inf")
        if not start <= offset < end:
            return False
        if self.every is None or self.lasting is None:
            return True
        period = parse_duration(self.every).total_seconds()
        return (offset - start) % period < parse_duration(self.lasting).total_seconds()

    def began(self, offset: float) -> float:
        """When the stretch active at ``offset`` began (its cycle's start, with ``every``)."""
        start = parse_duration(self.at).total_seconds()
        if self.every is None:
            return start
        period = parse_duration(self.every).total_seconds()
        return start + (offset - start) // period * period


class Owner(ApiModel):
    kind: str = Field(description="The owning workload's kind (for kube_pod_owner).")
    name: str = Field(description="Its name.")


class SimPod(ApiModel):
    namespace: str = Field(pattern=DNS_LABEL, max_length=63, description="The pod's namespace.")
    name: str = Field(max_length=253, description="The pod's name.")
    node: str = Field(default="gpu-node-0", description="The node it runs on.")
    gpus: int = Field(default=8, ge=0, le=16, description="GPUs allocated to it.")
    start: Duration = Field(
        default="0s", description="When the pod appears (its series start then)."
    )
    step_counter: bool = Field(default=True, description="Whether it exports training_steps_total.")
    owner: Owner | None = Field(default=None, description="Its controller, if any.")
    scan_from: int = Field(
        default=1,
        ge=1,
        le=65535,
        description="The first port its scans probe (an agent splitting a range over its "
        "pods gives each a slice).",
    )
    timeline: list[Segment] = Field(min_length=1, description="What it does when.")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def exists(self, offset: float) -> bool:
        return offset >= parse_duration(self.start).total_seconds()


class Expectation(ApiModel):
    pod: str = Field(description="namespace/name of the pod.")
    trips: bool = Field(description="Whether the default policy must trip it.")
    from_: Duration | None = Field(default=None, alias="from", description="The first bad sample.")
    within: Duration | None = Field(default=None, description="The detection budget from there.")


class Scenario(ApiModel):
    name: str = Field(pattern=DNS_LABEL, max_length=63, description="The scenario's name.")
    description: str = Field(default="", description="What it replays.")
    duration: Duration = Field(description="How long it runs.")
    interval: Duration = Field(default="15s", description="The exporters' sampling interval.")
    start: dt.datetime | None = Field(default=None, description="Where files start.")
    pods: list[SimPod] = Field(min_length=1, description="The pods and their timelines.")
    expect: list[Expectation] = Field(default_factory=list, description="Expected outcomes.")

    @property
    def seconds(self) -> float:
        return parse_duration(self.duration).total_seconds()

    @property
    def step(self) -> float:
        return parse_duration(self.interval).total_seconds()


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


def load(path: Path) -> Scenario:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ScenarioError(f"{path}: cannot read: {error}") from error
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ScenarioError(f"{path}: {where}: {first['msg']}") from error
    names = [pod.key for pod in scenario.pods]
    for expectation in scenario.expect:
        if expectation.pod not in names:
            raise ScenarioError(f"{path}: expect: pod {expectation.pod} is not in pods")
    return scenario
