"""Clamping a namespace's GPU quota while its breaker is tripped, and undoing exactly that. Pure.

Once a tripped workload's GPUs have been handed to another job, nothing stops its tenant
from asking for them again: a new pod would be admitted and take them back. Capping the
namespace's ``requests.nvidia.com/gpu`` at what its other pods hold closes that door.

May touch only ResourceQuotas of that namespace: it lowers the GPU line of those that cap
every pod (never raising one), or creates ``breaker-gpu-clamp`` when none does. Each quota
it touches carries a ``breaker.dev/gpu-clamp`` annotation, written in the same patch as
the change: which breakers hold the clamp, the value before the first of them and the
value set last. Breakers of one namespace thus share a clamp; a restore lets go of it, and
only the last to let go puts the value back (or deletes the quota a breaker created).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breaker.actions import marks
from breaker.api.quantity import count
from breaker.constants import CLAMP_MARK, CLAMP_QUOTA_NAME

GPU_QUOTA_KEY = "requests.nvidia.com/gpu"
MARK = CLAMP_MARK
MANAGED = {"app.kubernetes.io/managed-by": "breaker"}


@dataclass(frozen=True)
class Create:
    body: dict[str, Any]  # a whole ResourceQuota


@dataclass(frozen=True)
class Patch:
    name: str
    patch: dict[str, Any]  # a JSON merge patch, with the resourceVersion it was planned on


@dataclass(frozen=True)
class Delete:
    name: str
    resource_version: str | None = None  # a precondition: delete the quota only as it was read


Operation = Create | Patch | Delete


# A quota's GPU count, None when it is not a whole count (a fraction, garbage): the plan
# leaves such a quota alone and relies on a quota it can read, creating one if it must.
quantity = count


def plan_clamp(
    quotas: Iterable[Mapping[str, Any]], namespace: str, gpus_in_use: int, breaker: str = ""
) -> tuple[list[Operation], dict[str, Any]]:
    """(what to change, the record a restore needs) to cap the namespace at ``gpus_in_use``.

    ``quotas`` are every ResourceQuota of the namespace. ``breaker`` names the holder: pass
    the breaker's name, or every caller counts as one holder and the first restore lifts
    a clamp that another breaker still needs.

    The record: ``{"breaker", "held": [quota names], "created": [names],
    "lowered": {name: {"was": "16", "clamped": "4"}}}``. A quota already at or below the
    cap that no breaker holds is neither changed nor recorded; planning again on what the
    first plan left changes nothing.
    """
    if gpus_in_use < 0:
        raise ValueError(f"gpus_in_use cannot be negative, got {gpus_in_use}")
    listed = list(quotas)
    record: dict[str, Any] = {"breaker": breaker, "held": [], "created": [], "lowered": {}}
    capping = [q for q in listed if _caps_every_pod(q) and quantity(_hard(q)) is not None]
    if not capping:
        capping = [q for q in listed if _name(q) == CLAMP_QUOTA_NAME]
        if not capping:
            record["held"].append(CLAMP_QUOTA_NAME)
            record["created"].append(CLAMP_QUOTA_NAME)
            return [Create(_clamp_quota(namespace, gpus_in_use, breaker))], record
    operations: list[Operation] = []
    for quota in capping:
        operation = _clamp(quota, gpus_in_use, breaker, record)
        if operation is not None:
            operations.append(operation)
    return operations, record


def plan_restore(
    record: Mapping[str, Any], quotas: Iterable[Mapping[str, Any]]
) -> tuple[list[Operation], dict[str, str]]:
    """(what to change, {quota name: why it was left as it is}) to undo ``plan_clamp``.

    Reads the quotas' marks rather than the record alone, so one breaker's restore never
    lifts a clamp another breaker still holds, and restoring twice changes nothing.
    """
    breaker = str(record.get("breaker", ""))
    by_name = {_name(q): q for q in quotas}
    names = dict.fromkeys(
        [
            *(record.get("held") or []),
            *(record.get("created") or []),
            *(record.get("lowered") or {}),
        ]
    )
    operations: list[Operation] = []
    skipped: dict[str, str] = {}
    for name in names:
        quota = by_name.get(name)
        if quota is None:
            if name in (record.get("lowered") or {}):
                skipped[name] = "the quota was deleted meanwhile"
            continue
        mark = _mark(quota)
        if mark is None or breaker not in mark["holders"]:
            continue  # let go of already, or someone took the mark off and the quota with it
        operation, why = _let_go(quota, mark, breaker)
        if operation is not None:
            operations.append(operation)
        if why:
            skipped[name] = why
    return operations, skipped


def _clamp(
    quota: Mapping[str, Any], gpus: int, breaker: str, record: dict[str, Any]
) -> Operation | None:
    name = _name(quota)
    found = _hard(quota)
    value = quantity(found)
    lower = value is None or value > gpus
    mark = _mark(quota)
    if mark is None:
        if not lower:
            return None  # tight enough already, and by its owner: nothing to hold
        mark = {"holders": [], "was": _text(found), "clamped": _text(found), "created": False}
    # A clamp held by another breaker is joined even when it is tight enough for this one,
    # so that the other's restore does not lift it from under this one.
    holders = sorted({*mark["holders"], breaker})
    record["held"].append(name)
    if not lower and holders == mark["holders"]:
        return None
    patch: dict[str, Any] = {}
    if lower:
        patch["spec"] = {"hard": {GPU_QUOTA_KEY: str(gpus)}}
        record["lowered"][name] = {"was": _text(found), "clamped": str(gpus)}
        mark = {**mark, "clamped": str(gpus)}
    patch["metadata"] = _marked(quota, {**mark, "holders": holders})
    return Patch(name, patch)


def _let_go(
    quota: Mapping[str, Any], mark: Mapping[str, Any], breaker: str
) -> tuple[Operation | None, str | None]:
    name = _name(quota)
    others = [h for h in mark["holders"] if h != breaker]
    if others:
        return Patch(name, {"metadata": _marked(quota, {**mark, "holders": others})}), None
    if mark.get("created"):
        return Delete(name, _version(quota).get("resourceVersion")), None
    current = _hard(quota)
    patch: dict[str, Any] = {"metadata": _marked(quota, None)}
    if _same(current, mark.get("clamped")):
        patch["spec"] = {"hard": {GPU_QUOTA_KEY: mark.get("was")}}
        return Patch(name, patch), None
    if _same(current, mark.get("was")):
        return Patch(name, patch), None
    # Someone set the quota after the clamp: theirs is the newer decision, so it stands,
    # whether it is higher or lower than what the breaker found.
    why = f"{GPU_QUOTA_KEY} is {current} now, not the {mark.get('clamped')} the breaker set"
    return Patch(name, patch), why


def _clamp_quota(namespace: str, gpus: int, breaker: str) -> dict[str, Any]:
    mark = {"holders": [breaker], "was": None, "clamped": str(gpus), "created": True}
    return {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {
            "name": CLAMP_QUOTA_NAME,
            "namespace": namespace,
            "labels": dict(MANAGED),
            "annotations": {MARK: marks.write(mark)},
        },
        "spec": {"hard": {GPU_QUOTA_KEY: str(gpus)}},
    }


def _caps_every_pod(quota: Mapping[str, Any]) -> bool:
    # A scoped quota (by priority class, by terminating, ...) lets pods outside its scope by.
    spec = quota.get("spec") or {}
    return not spec.get("scopes") and not spec.get("scopeSelector")


def _name(quota: Mapping[str, Any]) -> str:
    return str((quota.get("metadata") or {}).get("name", ""))


def _hard(quota: Mapping[str, Any]) -> Any:
    return ((quota.get("spec") or {}).get("hard") or {}).get(GPU_QUOTA_KEY)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _same(left: Any, right: Any) -> bool:
    a, b = quantity(left), quantity(right)
    return a == b if a is not None and b is not None else _text(left) == _text(right)


def _version(obj: Mapping[str, Any]) -> dict[str, Any]:
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return {"resourceVersion": version} if version else {}


def _mark(quota: Mapping[str, Any]) -> dict[str, Any] | None:
    mark = marks.read(quota, MARK)
    if mark is None:
        return None
    return mark


def _marked(quota: Mapping[str, Any], mark: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metadata half of a patch: the new mark (None removes it), and the
    resourceVersion it was planned on, so a stale plan is refused instead of overwriting
    another breaker's hold or an admin's change."""
    return {**_version(quota), "annotations": {MARK: None if mark is None else marks.write(mark)}}
