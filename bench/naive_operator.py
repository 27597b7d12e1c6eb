"""The naive design the benchmark measures breaker against: a kopf timer per workload.

What a team wires up first: every guarded Job and TrainingJob gets a timer; each tick it
asks Prometheus for every signal narrowed to its own pods (one query per signal per
workload), and when one has held for its ``for`` it writes a deny-all-egress
NetworkPolicy for its pods and suspends itself. No state machine, no reset, no evidence,
and a deny-all policy that any other NetworkPolicy allowing egress still out-allows
(policies add up). The GPUs go back to the queue as with breaker: breaker's TrainingJob
queue runs beside it. The pods come from a kopf index, so it does not poll the API
server either: the comparison is about the evaluation.

It writes, on the workload, when it saw the trip and when it had contained it
(``bench.breaker.dev/detected`` and ``/contained``, epoch seconds), for the bench to read.

    kopf run --standalone --all-namespaces bench/naive_operator.py
    (NAIVE_POLICY: a BreakerPolicy spec file; NAIVE_PROMETHEUS; NAIVE_NAMESPACES: a
    comma-separated list of the guarded namespaces)
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import kopf
import yaml
from kubernetes import client, config

from breaker import kube
from breaker.api.policy import BreakerPolicySpec
from breaker.detect import engine
from breaker.detect.prom import Prom, QueryError
from breaker.detect.promql import scoped

INTERVAL = float(os.environ.get("NAIVE_INTERVAL", "2"))
GUARDED = set(os.environ.get("NAIVE_NAMESPACES", "").split(","))
DETECTED, CONTAINED = "bench.breaker.dev/detected", "bench.breaker.dev/contained"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.level = 40  # errors only: Events are API requests too
    spec = yaml.safe_load(Path(os.environ["NAIVE_POLICY"]).read_text())
    memo.detector = engine.compile_policy(BreakerPolicySpec.model_validate(spec))
    memo.prom = Prom(os.environ["NAIVE_PROMETHEUS"], timeout_seconds=5)
    config.load_kube_config()  # type: ignore[no-untyped-call]
    memo.api = client.ApiClient()
    memo.since = {}


@kopf.index("", "v1", "pods")
def pods_of(namespace: str | None, name: str, labels: kopf.Labels, **_: Any) -> Any:
    """(namespace, workload) -> pod names; Jobs label theirs job-name, TrainingJobs theirs
    breaker.dev/trainingjob."""
    owner = labels.get("job-name") or labels.get("breaker.dev/trainingjob")
    return {(namespace, owner): name} if owner and namespace in GUARDED else None


def _selector(kind: str, name: str) -> dict[str, str]:
    return {"job-name": name} if kind == "Job" else {"breaker.dev/trainingjob": name}


def _guarded(
    namespace: str | None, meta: kopf.Meta, spec: kopf.Spec, annotations: kopf.Annotations, **_: Any
) -> bool:
    """A workload of its own (not the batch Job a TrainingJob runs as), still running."""
    return (
        namespace in GUARDED
        and not meta.get("ownerReferences")
        and "breaker.dev/trainingjob" not in (meta.get("labels") or {})
        and not spec.get("suspend")
        and CONTAINED not in annotations
    )


@kopf.timer("batch", "v1", "jobs", interval=INTERVAL, when=_guarded)
@kopf.timer("breaker.dev", "v1alpha1", "trainingjobs", interval=INTERVAL, when=_guarded)
async def check(
    body: kopf.Body, name: str, namespace: str | None, memo: Any, **kwargs: Any
) -> None:
    assert namespace is not None
    pods_of: kopf.Index[tuple[str, str], str] = kwargs["pods_of"]
    pods = list(pods_of.get((namespace, name), []))
    if not pods:
        return
    detector: engine.Detector = memo.detector
    prom: Prom = memo.prom
    since: dict[tuple[str, str, str], float] = memo.since  # when each signal began to hold
    for signal in detector.signals:
        query = scoped(signal.query, signal.labels, namespace, pods)
        try:
            result = await asyncio.to_thread(prom.instant, query)
        except QueryError:
            continue
        now, key = time.time(), (namespace, name, signal.name)
        samples = engine.read(signal, result)
        if signal.across is not None:  # the workload's pods together: this workload's
            combined = engine.combine(signal.across, samples, lambda _pod: name)
            samples = {pod: sample for pod, sample in combined.values()}
        if not any(signal.holds(s.value) for s in samples.values()):
            since.pop(key, None)
            continue
        if now - since.setdefault(key, now) >= signal.for_seconds:  # the signal's `for`
            await contain(memo.api, body, name, namespace, now)
            return


async def contain(
    api: client.ApiClient, body: kopf.Body, name: str, namespace: str, seen: float
) -> None:
    kind = body["kind"]
    policy = {
        "metadata": {"name": f"naive-quarantine-{name}"[:253]},
        "spec": {"podSelector": {"matchLabels": _selector(kind, name)}, "policyTypes": ["Egress"]},
    }
    try:
        await kube.call(
            client.NetworkingV1Api(api).create_namespaced_network_policy, namespace, policy
        )
    except client.ApiException as error:
        if error.status != 409:
            raise
    suspend = {"spec": {"suspend": True}, "metadata": {"annotations": {DETECTED: f"{seen:.3f}"}}}
    await _patch(api, kind, name, namespace, suspend)
    done = {"metadata": {"annotations": {CONTAINED: f"{time.time():.3f}"}}}
    await _patch(api, kind, name, namespace, done)


async def _patch(
    api: client.ApiClient, kind: str, name: str, namespace: str, patch: dict[str, Any]
) -> None:
    if kind == "Job":
        await kube.merge_patch(client.BatchV1Api(api).patch_namespaced_job, name, namespace, patch)
    else:
        objects = client.CustomObjectsApi(api)
        await kube.call(
            objects.patch_namespaced_custom_object,
            "breaker.dev", "v1alpha1", namespace, "trainingjobs", name, patch,
        )  # fmt: skip
