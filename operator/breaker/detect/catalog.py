"""The signal presets' parameters: names, kinds and defaults.

The detection engine turns each preset and its parameters into one PromQL query; this
catalogue is what a policy's ``params`` are checked against, so a typo in a parameter
name is reported on the policy instead of silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from breaker.api.common import parse_duration

Kind = Literal["number", "duration", "ports", "regex", "metric"]


@dataclass(frozen=True)
class Param:
    kind: Kind
    default: str
    help: str


PRESETS: dict[str, dict[str, Param]] = {
    "gpu-mining-profile": {
        "dramActiveMin": Param("number", "0.6", "DCGM_FI_PROF_DRAM_ACTIVE at or above this (0-1)"),
        "tensorActiveMax": Param("number", "0.05", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE at or below"),
        "grEngineActiveMin": Param("number", "0.6", "DCGM_FI_PROF_GR_ENGINE_ACTIVE at or above"),
    },
    "tensor-collapse": {
        "dropRatio": Param("number", "0.2", "tensor activity below this share of its baseline"),
        "baselineWindow": Param("duration", "30m", "the pod's own baseline window"),
        "grEngineActiveMin": Param("number", "0.5", "while the GPU stays at least this busy"),
    },
    "gpu-busy-no-progress": {
        "gpuUtilMin": Param("number", "80", "DCGM_FI_DEV_GPU_UTIL (percent) at or above"),
        "window": Param("duration", "10m", "with no training progress over this window"),
        "progressMetric": Param("metric", "training_steps_total", "the job's step counter"),
    },
    "unallocated-gpu-activity": {
        "gpuUtilMin": Param("number", "10", "utilisation on a GPU no pod was allocated"),
    },
    "mining-pool-egress": {
        "ports": Param("ports", "3333,4444,5555,7777,9999,14444,45700", "mining-pool ports"),
        "window": Param("duration", "2m", "flows to the world on those ports within"),
    },
    "outbound-ssh": {
        "ports": Param("ports", "22", "SSH ports"),
        "window": Param("duration", "10m", "persistent flows to the world within"),
    },
    "scan-fanout": {
        "synRateMin": Param("number", "20", "SYNs per second without SYN-ACK"),
        "window": Param("duration", "1m", "rate window"),
    },
    "egress-spike": {
        "factor": Param("number", "10", "transmit rate above this multiple of its baseline"),
        "baselineWindow": Param("duration", "1h", "the pod's own baseline window"),
        "minBytesPerSecond": Param("number", "10000000", "and above this absolute rate"),
    },
    "falco-rule-hits": {
        "rules": Param("regex", "(?i).*(stratum|miner|crypto|ssh|network tool).*", "rule names"),
        "window": Param("duration", "5m", "hits within"),
    },
}

_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_PORTS = re.compile(r"^\d{1,5}(,\d{1,5})*$")


def check_value(kind: Kind, value: str) -> str | None:
    """Why ``value`` is not a valid ``kind``, or None."""
    if kind == "number":
        try:
            float(value)
        except ValueError:
            return f"{value!r} is not a number"
    elif kind == "duration":
        try:
            parse_duration(value)
        except ValueError as error:
            return str(error)
    elif kind == "ports":
        if not _PORTS.match(value) or not all(1 <= int(p) <= 65535 for p in value.split(",")):
            return f"{value!r} is not a comma-separated list of ports (1-65535)"
    elif kind == "regex":
        try:
            re.compile(value)
        except re.error as error:
            return f"{value!r} is not a regular expression: {error}"
    elif kind == "metric" and not _METRIC.match(value):
        return f"{value!r} is not a metric name"
    return None
