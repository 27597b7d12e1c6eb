"""Quarantining a node on node-level signals (cordon and taint), and undoing exactly that. Pure.

May touch a Node's ``spec.unschedulable``, ``spec.taints`` and one annotation,
``breaker.dev/quarantine``: which breakers hold the quarantine, whether a breaker
cordoned the node and which taints breakers added. The annotation is written in the same
patch as the change, so it survives a crash that loses a breaker's own record, and it
lets several breakers share a node: each release lets go, and only the last one lifts the
quarantine. A node that was cordoned before stays cordoned; taints anyone else put on the
node, before or meanwhile, stay where they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from breaker.actions import marks
from breaker.constants import NODE_MARK, NODE_TAINT

TAINT_KEY = NODE_TAINT
MARK = NODE_MARK


def holder(namespace: str, breaker: str) -> str:
    """Who holds a node's quarantine: a Node is cluster-wide, so a Breaker's name alone
    would let two namespaces' breakers of one name release each other's quarantine."""
    return f"{namespace}/{breaker}"


def quarantine_taint(breaker: str, evict: bool = False) -> dict[str, str]:
    """The taint a breaker puts on a node; its value names the breaker.

    NoSchedule unless ``evict``: only new placements stop. The suspect pods keep running,
    so the evidence in them survives, and other tenants' pods on the node are not evicted
    for one tenant's fault. NoExecute drives out every pod that does not tolerate it.
    """
    # A taint's value follows label-value syntax; a breaker's name may be longer or hold
    # a "/". The mark, not this value, says whose taint it is.
    value = re.sub(r"[^A-Za-z0-9._-]", "-", breaker)[:63].strip("-_.")
    return {"key": TAINT_KEY, "value": value, "effect": "NoExecute" if evict else "NoSchedule"}


def quarantine(
    node: Mapping[str, Any], breaker: str, cordon: bool, taint: bool, evict: bool = False
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the merge patch that quarantines the node or None, the record of what it did).

    ``breaker`` is the holder's identity, ``holder(namespace, name)``.

    The record: ``{"breaker", "wasUnschedulable", "cordoned", "hadTaint", "taint"}`` where
    ``cordoned`` says this call cordons the node and ``taint`` is the taint it adds (None
    when it adds none). The patch carries the node's whole taint list, since a merge patch
    replaces lists, and the resourceVersion it was planned on, so a taint added meanwhile
    is not lost: the API server refuses the stale patch instead.
    """
    spec = node.get("spec") or {}
    taints = list(spec.get("taints") or [])
    ours = quarantine_taint(breaker, evict)
    was_unschedulable = bool(spec.get("unschedulable"))
    # Taints are unique by key and effect: one already there (from an earlier trip, or
    # another breaker) quarantines the node as well as ours would, and ours beside it
    # would be refused.
    had_taint = any(t.get("key") == TAINT_KEY and t.get("effect") == ours["effect"] for t in taints)
    cordons = cordon and not was_unschedulable
    adds = taint and not had_taint
    record: dict[str, Any] = {
        "breaker": breaker,
        "wasUnschedulable": was_unschedulable,
        "cordoned": cordons,
        "hadTaint": had_taint,
        "taint": ours if adds else None,
    }
    if not (cordon or taint):
        return None, record
    mark = _mark(node) or {"holders": [], "cordoned": False, "taints": []}
    held = {
        "holders": sorted({*mark["holders"], breaker}),
        "cordoned": mark["cordoned"] or cordons,
        "taints": [*mark["taints"], ours] if adds else mark["taints"],
    }
    changes: dict[str, Any] = {}
    if cordons:
        changes["unschedulable"] = True
    if adds:
        changes["taints"] = [*taints, ours]
    if not changes and held == mark:
        return None, record
    patch: dict[str, Any] = {"metadata": _marked(node, held)}
    if changes:
        patch["spec"] = changes
    return patch, record


def release(node: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that lets go of the quarantine ``quarantine`` recorded, or None.

    The last breaker to let go uncordons the node if a breaker cordoned it and removes the
    taints breakers added (matched on key, value and effect); one that is not the last only
    takes its name off the mark. A node without this breaker on its mark is left alone: it
    was released already, or whoever took the mark off took the quarantine over.
    """
    breaker = record.get("breaker")
    mark = _mark(node)
    if mark is None or breaker not in mark["holders"]:
        return None
    others = [h for h in mark["holders"] if h != breaker]
    if others:
        return {"metadata": _marked(node, {**mark, "holders": others})}
    spec = node.get("spec") or {}
    changes: dict[str, Any] = {}
    if mark["cordoned"] and spec.get("unschedulable"):
        changes["unschedulable"] = None  # unset, as on a node never cordoned
    added = {_identity(t) for t in mark["taints"]}
    taints = list(spec.get("taints") or [])
    kept = [t for t in taints if _identity(t) not in added]
    if len(kept) != len(taints):
        changes["taints"] = kept or None
    patch: dict[str, Any] = {"metadata": _marked(node, None)}
    if changes:
        patch["spec"] = changes
    return patch


def _identity(taint: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    # timeAdded is left out: the API server fills it in for NoExecute taints.
    return taint.get("key"), taint.get("value"), taint.get("effect")


def _mark(node: Mapping[str, Any]) -> dict[str, Any] | None:
    mark = marks.read(node, MARK)
    if mark is None:
        return None
    return {
        "holders": mark["holders"],
        "cordoned": bool(mark.get("cordoned")),
        "taints": [t for t in mark.get("taints") or [] if isinstance(t, dict)],
    }


def _marked(node: Mapping[str, Any], mark: Mapping[str, Any] | None) -> dict[str, Any]:
    """The metadata half of a patch: the new mark (None removes it), and the
    resourceVersion it was planned on."""
    version = (node.get("metadata") or {}).get("resourceVersion")
    marked: dict[str, Any] = {"annotations": {MARK: None if mark is None else marks.write(mark)}}
    return {"resourceVersion": version, **marked} if version else marked
