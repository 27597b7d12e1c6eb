"""The signal presets' parameters: names, kinds and defaults.

The detection engine turns each preset and its parameters into one PromQL query; this
catalogue is what a policy's ``params`` are checked against, so a typo in a parameter
name is reported on the policy instead of silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from breaker.api.common import parse_duration

Kind = Literal["number", "duration", "ports", "port", "regex", "metric", "choice"]


@dataclass(frozen=True)
class Param:
    kind: Kind
    default: str
    help: str
    choices: tuple[str, ...] = ()  # a "choice"'s values


# Where the network presets read flows: Cilium's Hubble metrics, or breaker's node agent's
# (counted from each node's conntrack and raw table, on any CNI).
SOURCES = ("hubble", "node-agent")
SOURCE = Param("choice", "hubble", "whose flow metrics: hubble or node-agent", SOURCES)


# The record types DNS tunnels carry data in, as Hubble names them: iodine NULL (then
# PRIVATE, TXT, MX, CNAME), dnscat2 TXT, CNAME and MX, dns2tcp and dnstt TXT. Hubble's
# parser has no name for PRIVATE (65399) or ANY (255): it labels them "Unknown". Name
# resolution asks for A and AAAA, and service discovery for SRV, which are left out.
TUNNEL_QTYPES = "TXT|NULL|CNAME|MX|Unknown"

FALCO_RULES = (
    "(?i).*(stratum|miner|ssh connection non standard port|suspicious network tool"
    "|reverse shell|redirect stdout/stdin to network connection).*"
)

PRESETS: dict[str, dict[str, Param]] = {
    "gpu-mining-profile": {
        "scoreMin": Param("number", "0.65", "DRAM activity minus tensor activity at or above"),
        "dramActiveMin": Param("number", "0.85", "DCGM_FI_PROF_DRAM_ACTIVE at or above (0-1)"),
        "grEngineActiveMin": Param("number", "0.5", "DCGM_FI_PROF_GR_ENGINE_ACTIVE at or above"),
    },
    "gpu-mining-duty": {
        "dutyMin": Param("number", "0.4", "share of the window's minutes with the profile"),
        "window": Param("duration", "15m", "the window the share is taken over"),
        "scoreMin": Param("number", "0.65", "DRAM activity minus tensor activity at or above"),
        "dramActiveMin": Param("number", "0.85", "DCGM_FI_PROF_DRAM_ACTIVE at or above (0-1)"),
        "grEngineActiveMin": Param("number", "0.5", "DCGM_FI_PROF_GR_ENGINE_ACTIVE at or above"),
    },
    "tensor-collapse": {
        "dropRatio": Param("number", "0.2", "recent tensor activity at or below this share"),
        "baselineWindow": Param("duration", "30m", "the pod's own baseline, before recentWindow"),
        "recentWindow": Param("duration", "5m", "the recent window compared with it"),
        "baselineMin": Param("number", "0.1", "only pods whose baseline used tensor cores"),
        "grEngineActiveMin": Param("number", "0.5", "while the GPU stays at least this busy"),
    },
    "gpu-busy-no-progress": {
        "gpuUtilMin": Param("number", "80", "DCGM_FI_DEV_GPU_UTIL (percent) at or above"),
        "window": Param("duration", "10m", "with no training progress over this window"),
        "progressMetric": Param("metric", "training_steps_total", "the job's step counter"),
    },
    "unallocated-gpu-activity": {
        "gpuUtilMin": Param("number", "10", "utilisation (percent) on a GPU no pod holds"),
    },
    "mining-pool-egress": {
        "ports": Param("ports", "3333,4444,5555,7777,9999,14433,14444,45700", "pool ports"),
        "window": Param("duration", "2m", "flows to the world on those ports within"),
        "source": SOURCE,
    },
    "outbound-ssh": {
        "ports": Param("ports", "22", "SSH ports"),
        "window": Param("duration", "10m", "the window persistence is measured over"),
        "persistence": Param("number", "0.8", "share of its minutes with SSH flows (0-1)"),
        "source": SOURCE,
    },
    "scan-fanout": {
        "distinctPortsMin": Param("number", "20", "distinct destination ports at or above"),
        "synRateMin": Param("number", "0.05", "and SYNs sent per second at or above"),
        "window": Param("duration", "5m", "within this window"),
        "source": SOURCE,
        "across": Param(
            "choice",
            "pod",
            "pod: each pod's own ports; workload: the distinct ports of a workload's pods",
            ("pod", "workload"),
        ),
        "portMax": Param("port", "65535", "count destination ports up to this one only"),
    },
    "policy-drops": {
        "perMinuteMin": Param("number", "30", "egress drops by NetworkPolicy per minute"),
        "window": Param("duration", "5m", "the rate's window"),
        "source": SOURCE,
    },
    "dns-tunnel": {
        "qtypes": Param("regex", TUNNEL_QTYPES, "query types tunnels use (Hubble's qtypes)"),
        "perSecondMin": Param("number", "1", "such queries per second at or above"),
        "window": Param("duration", "1m", "the rate's window"),
    },
    "dns-tunnel-persistent": {
        "qtypes": Param("regex", TUNNEL_QTYPES, "query types tunnels use (Hubble's qtypes)"),
        "window": Param("duration", "30m", "the window persistence is measured over"),
        "persistence": Param("number", "0.3", "share of its minutes with such queries (0-1)"),
    },
    "egress-spike": {
        "factor": Param("number", "10", "transmit rate at or above this multiple of baseline"),
        "baselineWindow": Param("duration", "30m", "the pod's own baseline window"),
        "minBytesPerSecond": Param("number", "10000000", "and at or above this rate"),
        "rateWindow": Param("duration", "5m", "the window of each rate (and the baseline's step)"),
    },
    "falco-rule-hits": {
        "rules": Param("regex", FALCO_RULES, "Falco rule names (a PromQL regex)"),
        "priorities": Param(
            "regex",
            "(?i)emergency|alert|critical|error|warning|notice|informational|debug",
            "Falco priorities counted (falcosidekick's priority_raw label)",
        ),
        "window": Param("duration", "5m", "hits within"),
    },
}

_METRIC = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_PORTS = re.compile(r"^\d{1,5}(,\d{1,5})*$")


def check_value(param: Param, value: str) -> str | None:
    """Why ``value`` is not a valid value of ``param``, or None."""
    if param.kind == "choice":
        return (
            None
            if value in param.choices
            else f"{value!r} is not one of {', '.join(param.choices)}"
        )
    return _CHECKS[param.kind](value)


def _number(value: str) -> str | None:
    try:
        float(value)
    except ValueError:
        return f"{value!r} is not a number"
    return None


def _duration(value: str) -> str | None:
    try:
        parse_duration(value)
    except ValueError as error:
        return str(error)
    return None


def _port_list(value: str) -> str | None:
    if not _PORTS.match(value) or not all(1 <= int(p) <= 65535 for p in value.split(",")):
        return f"{value!r} is not a comma-separated list of ports (1-65535)"
    return None


def _port(value: str) -> str | None:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        return f"{value!r} is not a port (1-65535)"
    return None


def _regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as error:
        return f"{value!r} is not a regular expression: {error}"
    return None


def _metric(value: str) -> str | None:
    return None if _METRIC.match(value) else f"{value!r} is not a metric name"


_CHECKS: dict[str, Callable[[str], str | None]] = {
    "number": _number,
    "duration": _duration,
    "ports": _port_list,
    "port": _port,
    "regex": _regex,
    "metric": _metric,
}
