"""Policy handlers: check what the schema could not, and say so in the Ready condition."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
from pydantic import ValidationError

from breaker.api.conditions import Cond, find, merge
from breaker.api.policy import BreakerPolicySpec, ClusterBreakerPolicySpec, PolicySpecBase
from breaker.constants import BREAKER_POLICIES, CLUSTER_BREAKER_POLICIES, GROUP, VERSION
from breaker.controllers import config
from breaker.detect.policy_check import problems

POLICY = (GROUP, VERSION, BREAKER_POLICIES)
CLUSTER_POLICY = (GROUP, VERSION, CLUSTER_BREAKER_POLICIES)


def _check(
    model: type[PolicySpecBase],
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
) -> None:
    try:
        found = problems(model.model_validate(dict(spec)))
    except ValidationError as error:
        # The API server checked the schema; this is only reached by a schema older than
        # the operator. Say which field, and keep going with everything else.
        found = [f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()]
    ready = (
        Cond("Ready", "False", "InvalidPolicy", "; ".join(found))
        if found
        else Cond("Ready", "True", "Valid", "the policy is valid")
    )
    before = find(status.get("conditions"), "Ready")
    generation = meta.get("generation")
    patch.status["conditions"] = merge(
        status.get("conditions"), [ready], dt.datetime.now(dt.UTC), generation
    )
    patch.status["observedGeneration"] = generation
    if found and (before is None or before.get("message") != ready.message):
        kopf.warn(body, reason="InvalidPolicy", message=ready.message)
    elif not found and before is not None and before.get("status") == "False":
        kopf.info(body, reason="PolicyValid", message="the policy is valid again")


# A namespaced policy is checked by the operator serving its namespace's breakers; a
# cluster policy by the one operator that runs the queue, so that shards do not all
# write its Ready condition.
@kopf.on.resume(*POLICY, when=config.serves_breakers)
@kopf.on.create(*POLICY, when=config.serves_breakers)
@kopf.on.update(*POLICY, field="spec", when=config.serves_breakers)
@kopf.on.resume(*CLUSTER_POLICY, when=config.serves_queue)
@kopf.on.create(*CLUSTER_POLICY, when=config.serves_queue)
@kopf.on.update(*CLUSTER_POLICY, field="spec", when=config.serves_queue)
def check_policy(
    resource: kopf.Resource,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    **_: Any,
) -> None:
    model = ClusterBreakerPolicySpec if resource.plural == CLUSTER_POLICY[2] else BreakerPolicySpec
    _check(model, spec, status, meta, body, patch)
