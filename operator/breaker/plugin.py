"""`kubectl breaker`: the admin's plugin (kubectl finds the `kubectl-breaker` script).

- ``status [-A]``: the breakers, their state, trips and last reason;
- ``explain BREAKER``: one breaker's story as a timeline: signals and values, what was done;
- ``reset BREAKER|WORKLOAD``: close it and undo every action (waits for the operator);
- ``trip WORKLOAD --reason TEXT``: force the workload's breakers open (ForcedOpen);
- ``egress POD``: what a pod can reach across every NetworkPolicy of its namespace, with the
  same function the operator and its tests use.

The formatting is pure (tested without a cluster); the commands are thin calls around it.
Errors say what to do next: not found, not allowed, operator not answering.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from kubernetes import client, config, watch

from breaker.actions.egress import Destination, EffectiveEgress, effective_egress
from breaker.api import containment
from breaker.circuit.plan import reset_token
from breaker.constants import BREAKERS, GROUP, VERSION

PLURAL = BREAKERS
OPERATOR_HINT = "is the operator running? `kubectl -n breaker-system get pods` and its logs say"


class PluginError(Exception):
    """A failure the user can act on; the message says how."""


# -- formatting (pure) -------------------------------------------------------------------

COLOURS = {
    "Open": "31",
    "Locked": "31",
    "ForcedOpen": "31",
    "HalfOpen": "33",
    "Closed": "32",
    "Disabled": "90",
    "Unknown": "33",
}


def paint(text: str, key: str, colour: bool) -> str:
    code = COLOURS.get(key)
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def age(since: str | None, now: dt.datetime) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    if not since:
        return "-"
    seconds = int((now - dt.datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def status_table(
    breakers: Iterable[Mapping[str, Any]], now: dt.datetime, all_namespaces: bool, colour: bool
) -> str:
    """The rows of `kubectl breaker status`, aligned, the state coloured when asked."""
    header = ["NAME", "WORKLOAD", "POLICY", "STATE", "SIGNALS", "TRIPS", "LAST TRIP", "REASON"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    rows: list[list[tuple[str, str]]] = []  # (text, colour key)
    for breaker in sorted(
        breakers, key=lambda b: (b["metadata"].get("namespace", ""), b["metadata"]["name"])
    ):
        spec, status = breaker.get("spec") or {}, breaker.get("status") or {}
        target, policy = spec.get("targetRef") or {}, spec.get("policyRef") or {}
        state = status.get("state") or "Pending"
        signals = status.get("signals") or "-"
        row = [
            (breaker["metadata"]["name"], ""),
            (f"{target.get('kind', '?')}/{target.get('name', '?')}", ""),
            (
                f"{'cluster/' if policy.get('kind') == 'ClusterBreakerPolicy' else ''}"
                f"{policy.get('name', '?')}",
                "",
            ),
            (state + (" (dry run)" if status.get("dryRun") else ""), state),
            (signals, signals if signals == "Unknown" else ""),
            (str(status.get("trips") or 0), ""),
            (age(status.get("lastTrip"), now) if status.get("lastTrip") else "-", ""),
            (_clip(status.get("reason") or "", 60), ""),
        ]
        if all_namespaces:
            row.insert(0, (breaker["metadata"].get("namespace", ""), ""))
        rows.append(row)
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(text)) for w, (text, _) in zip(widths, row, strict=True)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        cells = [
            paint(text.ljust(w), key, colour) if key else text.ljust(w)
            for (text, key), w in zip(row, widths, strict=True)
        ]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _clock(stamp: str) -> str:
    return stamp.replace("T", " ").replace("Z", "").split(".")[0] + "Z"


@dataclass(frozen=True)
class Moment:
    """One line of a breaker's timeline."""

    time: str
    what: str
    details: tuple[str, ...] = ()


def timeline(breaker: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> list[Moment]:
    """Transitions, the evidence of each trip, actions applied and undone, and Warning events,
    in time order (stable: a trip's transition, then its evidence, then its actions)."""
    status = breaker.get("status") or {}
    moments: list[tuple[str, int, Moment]] = []
    for transition in status.get("history") or []:
        moments.append(
            (
                transition["time"],
                0,
                Moment(
                    transition["time"],
                    f"{transition.get('from')} → {transition.get('to')}: "
                    f"{transition.get('reason', '')}",
                ),
            )
        )
    for evidence in status.get("evidence") or []:
        details = []
        for signal in evidence.get("signals") or []:
            where = f" on pod {signal['pod']}" if signal.get("pod") else ""
            details.append(f"{signal['name']} = {_number(signal.get('value'))}{where}")
            details.append(f"  query: {_clip(signal.get('query', ''), 160)}")
            labels = signal.get("labels") or {}
            if labels:
                shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
                details.append(f"  labels: {_clip(shown, 160)}")
        pods = evidence.get("pods") or []
        if pods:
            placed = ", ".join(f"{p['name']}@{p.get('node') or '?'}" for p in pods[:8])
            details.append(f"pods: {placed}{' …' if len(pods) > 8 else ''}")
        if evidence.get("truncated"):
            details.append("(evidence truncated to bound its size)")
        moments.append(
            (
                evidence["time"],
                1,
                Moment(evidence["time"], f"evidence (rule {evidence.get('rule')})", tuple(details)),
            )
        )
    namespace = str((breaker.get("metadata") or {}).get("namespace"))
    for index, record in enumerate(status.get("actions") or []):
        what, lines = _action_lines(record, index, namespace)
        moments.append((record["appliedAt"], 2, Moment(record["appliedAt"], what, tuple(lines))))
        if record.get("revertedAt"):
            moments.append(
                (record["revertedAt"], 2, Moment(record["revertedAt"], f"{record['type']} undone"))
            )
    for event in events:
        stamp = event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
        if stamp and event.get("type") == "Warning":
            stamp = stamp if isinstance(stamp, str) else stamp.isoformat()
            moments.append(
                (stamp, 3, Moment(stamp, f"Warning {event.get('reason')}: {event.get('message')}"))
            )
    moments.sort(key=lambda m: (_instant(m[0]), m[1]))
    return [moment for _, _, moment in moments]


def _action_lines(record: Mapping[str, Any], index: int, namespace: str) -> tuple[str, list[str]]:
    """An action record as the status contract reads it: in progress, failed, or what it
    changed; a record that breaks the contract is shown as it is, and said."""
    changed = record.get("changed")
    raw = [f"changed: {_clip(json.dumps(changed, sort_keys=True), 200)}"] if changed else []
    try:
        action = containment.action(record, index)
    except containment.ContractError as error:
        return f"{record.get('type')} (unreadable record)", [str(error), *raw]
    if action.stage == "pending":
        return f"{action.type} in progress (decided, not yet confirmed done)", []
    if action.stage in ("failed", "undoFailed"):
        return f"{action.type} FAILED", [f"error: {action.error}", *raw]
    verb = "would apply" if action.dry_run else "applied"
    return f"{action.type} {verb}", [containment.describe(action, namespace), *raw]


def containment_lines(status: Mapping[str, Any]) -> list[str]:
    """Where containment stands, for explain's header: in progress, done (and how fast),
    failed, or nothing held."""
    try:
        found = containment.read(status)
    except containment.ContractError as error:
        return [f"  contained unreadable: {error}"]
    if found.reason == containment.IN_PROGRESS:
        return [f"  contained in progress: {found.message}"]
    if found.reason in (containment.CONTAINED, containment.PROBATION):
        took = f" in {found.seconds:.2f} s" if found.seconds is not None else ""
        return [f"  contained yes{took} ({found.message})"]
    if found.reason == containment.NOT_TRIPPED:
        return []
    return [f"  contained no, {found.reason}: {found.message}"]


def _instant(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def explain(breaker: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> str:
    meta, spec = breaker["metadata"], breaker.get("spec") or {}
    status = breaker.get("status") or {}
    target, policy = spec.get("targetRef") or {}, spec.get("policyRef") or {}
    where = f"{policy.get('namespace')}/" if policy.get("namespace") else ""
    lines = [
        f"Breaker {meta.get('namespace')}/{meta['name']}",
        f"  guards    {target.get('kind')} {target.get('name')}",
        f"  policy    {policy.get('kind')} {where}{policy.get('name')}",
        f"  state     {status.get('state') or 'Pending'}"
        + (" (DryRun: nothing was changed)" if status.get("dryRun") else "")
        + (f", override {spec['override']}" if spec.get("override") else ""),
        f"  signals   {status.get('signals') or '-'}",
        f"  trips     {status.get('trips') or 0}"
        + (f", last {_clock(status['lastTrip'])}" if status.get("lastTrip") else ""),
    ]
    if status.get("reason"):
        lines.append(f"  reason    {status['reason']}")
    lines.extend(containment_lines(status))
    lines.extend(exposure_lines(status))
    moments = timeline(breaker, events)
    lines.append("")
    lines.append("Timeline" if moments else "Timeline: nothing has happened yet")
    for moment in moments:
        lines.append(f"  {_clock(moment.time)}  {moment.what}")
        lines.extend(f"      {detail}" for detail in moment.details)
    state = status.get("state")
    if state in ("Open", "Locked", "ForcedOpen", "HalfOpen") or status.get("contained"):
        lines.append("")
        lines.append(
            f"To close it and undo every action: kubectl breaker reset {meta['name']} "
            f"-n {meta.get('namespace')}"
        )
    return "\n".join(lines)


def exposure_lines(status: Mapping[str, Any]) -> list[str]:
    """What still reaches the held pods, and the workload's earlier uids it followed."""
    exposure = status.get("exposure") or {}
    lines = [
        f"  exposed   by Service {service}: what comes in is refused by the quarantine"
        for service in exposure.get("services") or []
    ]
    for session in exposure.get("sessions") or []:
        how = "ended" if session.get("ended") else "OPEN"
        lines.append(
            f"  exec      {how}: pod {session.get('pod')} (node {session.get('node')}, pid "
            f"{session.get('pid')}, since {session.get('started')}): {session.get('command')}"
        )
    for earlier in status.get("followed") or []:
        lines.append(
            f"  followed  the workload was made again under its name; it had uid "
            f"{earlier.get('uid')} until {_clock(str(earlier.get('until')))}"
        )
    return lines


def guarding(breakers: Iterable[Mapping[str, Any]], name: str, kind: str | None) -> list[Any]:
    """The breakers named ``name``, or else those guarding a workload named ``name``."""
    listed = list(breakers)
    named = [b for b in listed if b["metadata"]["name"] == name]
    if named:
        return named
    return [
        b
        for b in listed
        if (b.get("spec") or {}).get("targetRef", {}).get("name") == name
        and (kind is None or b["spec"]["targetRef"].get("kind", "").lower() == kind.lower())
    ]


def describe(name: str, egress: EffectiveEgress, policies: Sequence[Mapping[str, Any]]) -> str:
    if not egress.isolated:
        return (
            f"pod {name}: no NetworkPolicy selects it for egress, so it may reach anything "
            "(the policies of its namespace add nothing for it)"
        )
    lines = [f"pod {name}: egress isolated by {', '.join(egress.selecting)}"]
    if not egress.allowances:
        lines.append("  allowed: nothing (every connection out is denied)")
    for allowance in egress.allowances:
        lines.append(f"  allowed by {allowance.policy}: {json.dumps(dict(allowance.rule))}")
    if egress.open_to_everything:
        lines.append("  WARNING: a rule allows every destination on every port")
    return "\n".join(lines)


# -- the API -----------------------------------------------------------------------------


@dataclass
class Session:
    api: client.ApiClient
    namespace: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)


def _connect(namespace: str | None) -> Session:
    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]
        _, context = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except config.ConfigException as error:
        raise PluginError(f"no usable kubeconfig ({error}); set KUBECONFIG") from None
    default = (context or {}).get("context", {}).get("namespace") or "default"
    return Session(client.ApiClient(), namespace or default)


def _api_error(error: client.ApiException, doing: str, role: str) -> PluginError:
    if error.status == 403:
        return PluginError(f"not allowed to {doing}: ask a cluster admin for the {role} role")
    return PluginError(f"could not {doing}: {error.status} {error.reason}")


def _list(session: Session, all_namespaces: bool) -> list[dict[str, Any]]:
    return _listed(session, all_namespaces)[0]


def _listed(session: Session, all_namespaces: bool) -> tuple[list[dict[str, Any]], str | None]:
    """The breakers, and the resourceVersion of the list (where a watch starts)."""
    where = "all namespaces" if all_namespaces else session.namespace
    found: dict[str, Any]
    try:
        if all_namespaces:
            found = cast(
                dict[str, Any], session.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            )
        else:
            found = cast(
                dict[str, Any],
                session.custom.list_namespaced_custom_object(
                    GROUP, VERSION, session.namespace, PLURAL
                ),
            )
    except client.ApiException as error:
        raise _list_error(error, where) from None
    items: list[dict[str, Any]] = found["items"]
    return items, (found.get("metadata") or {}).get("resourceVersion")


def _list_error(error: client.ApiException, where: str) -> PluginError:
    if error.status == 404:
        return PluginError(
            "this cluster has no Breaker API: install the chart (helm/breaker) first"
        )
    return _api_error(error, f"list breakers in {where}", "breaker-viewer")


def _resolve(session: Session, name: str, kind: str | None) -> list[dict[str, Any]]:
    found = guarding(_list(session, False), name, kind)
    if not found:
        raise PluginError(
            f"no breaker named {name} and none guarding a workload named {name} in "
            f"{session.namespace}: `kubectl breaker status -n {session.namespace}` lists them "
            "(a workload no policy selects has no breaker)"
        )
    return found


def _patch(session: Session, breaker: Mapping[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The patched Breaker, as the API server returned it."""
    name = breaker["metadata"]["name"]
    try:
        return cast(
            dict[str, Any],
            session.custom.patch_namespaced_custom_object(
                GROUP, VERSION, session.namespace, PLURAL, name, body
            ),
        )
    except client.ApiException as error:
        if error.status == 404:
            raise PluginError(f"breaker {session.namespace}/{name} was deleted meanwhile") from None
        raise _api_error(
            error, f"change breaker {session.namespace}/{name}", "breaker-admin"
        ) from None


# What a wait made of a Breaker: None while the operator has not answered; (True, what it
# did) once it has; (False, why) while it is failing and retrying.
Verdict = tuple[bool, str] | None


def tripped(breaker: Mapping[str, Any], generation: int | None) -> Verdict:
    """Whether a ForcedOpen asked at ``generation`` is carried out: the Contained condition
    written for that generation or later, and out of InProgress (the first ForcedOpen
    write holds only the actions decided)."""
    status = breaker.get("status") or {}
    found = containment.read(status)
    if status.get("state") != "ForcedOpen" or not found.settled:
        return None
    if generation is not None and (found.observed_generation or 0) < generation:
        return None
    if found.reason in (containment.CONTAINED, containment.DRY_RUN):
        namespace = str(breaker["metadata"].get("namespace"))
        head = "ForcedOpen" + (
            " (DryRun policy: nothing was changed)" if found.reason == containment.DRY_RUN else ""
        )
        if found.seconds is not None:
            head += f", contained in {found.seconds:.2f} s"
        lines = [containment.describe(a, namespace) for a in found.actions]
        return True, "\n  ".join([head, *lines])
    return False, f"{found.reason}: {found.message}"


def reset_done(breaker: Mapping[str, Any], token: str | None) -> Verdict:
    """Whether the reset asked with ``token`` is carried out: handled, and nothing held."""
    status = breaker.get("status") or {}
    if status.get("handledReset") != token:
        return None
    found = containment.read(status)
    if found.reason == containment.NOT_TRIPPED:
        return True, "reset (closed, every action undone)"
    return False, f"{found.reason}: {found.message}"


# A watch of the namespace's breakers from a resourceVersion for up to so many seconds:
# (event type, object) pairs, until the server ends it.
Events = Callable[[Session, Sequence[str], str | None, int], Iterable[tuple[str, dict[str, Any]]]]


def _watch(
    session: Session, names: Sequence[str], version: str | None, seconds: int
) -> Iterable[tuple[str, dict[str, Any]]]:
    """The Breakers' changes from ``version`` (only the one, when there is one)."""
    selector = {"field_selector": f"metadata.name={names[0]}"} if len(names) == 1 else {}
    for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
        session.custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        session.namespace,
        PLURAL,
        resource_version=version,
        timeout_seconds=seconds,
        _request_timeout=seconds + 30,
        **selector,
    ):
        yield event["type"], event["raw_object"]


class _Progress:
    """Which of the named breakers are not done yet, and what the failing ones said."""

    def __init__(self, names: Sequence[str], judge: Callable[[Mapping[str, Any]], Verdict]):
        self.pending = set(names)
        self.failing: dict[str, str] = {}
        self.judge = judge

    def look(self, breaker: Mapping[str, Any]) -> None:
        name = breaker["metadata"]["name"]
        verdict = self.judge(breaker) if name in self.pending else None
        if verdict is None:
            return
        done, said = verdict
        if done:
            self.pending.discard(name)
            self.failing.pop(name, None)
            print(f"breaker {name}: {said}")
        elif self.failing.get(name) != said:
            self.failing[name] = said
            print(f"breaker {name}: {said} (the operator retries)", file=sys.stderr)

    def timed_out(self, timeout: float) -> PluginError:
        if self.failing:
            return PluginError(
                f"not done after {timeout:.0f}s: "
                + "; ".join(f"{n}: {self.failing[n]}" for n in sorted(self.failing))
                + "; `kubectl breaker explain NAME` shows each action and its error"
            )
        return PluginError(
            f"{', '.join(sorted(self.pending))}: no answer after {timeout:.0f}s; {OPERATOR_HINT}"
        )


def _wait(
    session: Session,
    names: Sequence[str],
    judge: Callable[[Mapping[str, Any]], Verdict],
    timeout: float,
    events: Events = _watch,
) -> None:
    """Until every breaker named is judged done: one list, then a watch from its
    resourceVersion (resumed where it ends; listed again once if that expired, 410)."""
    deadline = time.monotonic() + timeout
    progress = _Progress(names, judge)
    breakers, version = _listed(session, False)
    for breaker in breakers:
        progress.look(breaker)
    while progress.pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise progress.timed_out(timeout)
        try:
            for kind, breaker in events(
                session, sorted(progress.pending), version, math.ceil(left)
            ):
                version = (breaker.get("metadata") or {}).get("resourceVersion") or version
                if kind in ("ADDED", "MODIFIED"):
                    progress.look(breaker)
                if not progress.pending:
                    return
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError):
            continue  # the connection broke mid-watch: resume where it got to
        except client.ApiException as error:
            if error.status != 410:
                raise _list_error(error, session.namespace) from None
            breakers, version = _listed(session, False)  # expired: start again from a list
            for breaker in breakers:
                progress.look(breaker)


# -- commands ----------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    session = _connect(args.namespace)
    breakers = _list(session, args.all_namespaces)
    if not breakers:
        where = "any namespace" if args.all_namespaces else session.namespace
        print(f"No breakers in {where}.")
        return 0
    colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    now = dt.datetime.now(dt.UTC)
    print(status_table(breakers, now, args.all_namespaces, colour))
    return 0


def _explain(args: argparse.Namespace) -> int:
    session = _connect(args.namespace)
    breaker: dict[str, Any]
    try:
        breaker = cast(
            dict[str, Any],
            session.custom.get_namespaced_custom_object(
                GROUP, VERSION, session.namespace, PLURAL, args.breaker
            ),
        )
    except client.ApiException as error:
        if error.status == 404:
            candidates = guarding(_list(session, False), args.breaker, None)
            if len(candidates) == 1:
                breaker = candidates[0]
            else:
                raise PluginError(
                    f"breaker {session.namespace}/{args.breaker} not found: "
                    f"`kubectl breaker status -n {session.namespace}` lists them"
                ) from None
        else:
            raise _api_error(error, f"read breaker {args.breaker}", "breaker-viewer") from None
    events: list[dict[str, Any]] = []
    try:
        listed = client.CoreV1Api(session.api).list_namespaced_event(
            session.namespace,
            field_selector=f"involvedObject.name={breaker['metadata']['name']}",
        )
        events = session.api.sanitize_for_serialization(listed)["items"]  # type: ignore[no-untyped-call]
    except client.ApiException:
        pass  # events are a bonus: the status holds the story
    print(explain(breaker, events))
    return 0


def _reset(args: argparse.Namespace) -> int:
    session = _connect(args.namespace)
    breakers = _resolve(session, args.target, args.kind)
    token = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    expected: dict[str, str | None] = {}
    for breaker in breakers:
        spec: dict[str, Any] = {"reset": token}
        if (breaker.get("spec") or {}).get("override") == "ForcedOpen":
            spec.update(override=None, overrideReason=None)  # a reset ends a manual trip too
        _patch(session, breaker, {"spec": spec})
        after = {**breaker, "spec": {**(breaker.get("spec") or {}), **spec}}
        expected[breaker["metadata"]["name"]] = reset_token(after)
        print(f"breaker {breaker['metadata']['name']}: reset requested")
    if args.no_wait:
        return 0
    _wait(
        session,
        list(expected),
        lambda b: reset_done(b, expected[b["metadata"]["name"]]),
        args.timeout,
    )
    return 0


def _trip(args: argparse.Namespace) -> int:
    session = _connect(args.namespace)
    breakers = _resolve(session, args.workload, args.kind)
    reason = f"{args.reason} (by kubectl breaker trip)"
    asked: dict[str, int | None] = {}  # the generation each request made
    for breaker in breakers:
        patched = _patch(
            session, breaker, {"spec": {"override": "ForcedOpen", "overrideReason": reason}}
        )
        asked[breaker["metadata"]["name"]] = patched["metadata"].get("generation")
        print(f"breaker {breaker['metadata']['name']}: ForcedOpen requested")
    if args.no_wait:
        return 0
    _wait(
        session,
        list(asked),
        lambda b: tripped(b, asked[b["metadata"]["name"]]),
        args.timeout,
    )
    return 0


def _destination(text: str) -> Destination:
    address, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(address)
        return Destination(port=int(port), ip=address)
    except ValueError:
        raise PluginError(f"--to {text!r}: give IP:PORT, e.g. 203.0.113.7:3333") from None


def _egress(args: argparse.Namespace) -> int:
    session = _connect(args.namespace)
    namespace = session.namespace
    destinations = [_destination(target) for target in args.to or []]
    core, net = client.CoreV1Api(session.api), client.NetworkingV1Api(session.api)
    try:
        pod = core.read_namespaced_pod(args.pod, namespace)
        listed = net.list_namespaced_network_policy(namespace)
    except client.ApiException as error:
        if error.status == 404:
            raise PluginError(f"pod {namespace}/{args.pod} not found") from None
        raise _api_error(
            error, f"read pods and NetworkPolicies in {namespace}", "breaker-viewer"
        ) from None
    policies = session.api.sanitize_for_serialization(listed)["items"]  # type: ignore[no-untyped-call]
    labels = (pod.metadata.labels if pod.metadata else None) or {}
    egress = effective_egress(labels, policies)
    print(describe(f"{namespace}/{args.pod}", egress, policies))
    for target, destination in zip(args.to or [], destinations, strict=True):
        verdict = "ALLOWED" if egress.allows(destination, namespace) else "denied"
        print(f"  {target}: {verdict}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="kubectl breaker",
        description="Inspect and operate circuit breakers around GPU training jobs.",
    )
    parser.add_argument(
        "--version", action="version", version=f"kubectl-breaker {version('breaker')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def namespaced(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument("-n", "--namespace", help="the namespace (default: the context's)")
        return command

    def waiting(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--kind", help="only breakers of workloads of this kind (e.g. TrainingJob)"
        )
        command.add_argument(
            "--no-wait", action="store_true", help="return once the request is written"
        )
        command.add_argument(
            "--timeout", type=float, default=30, help="seconds to wait for the operator (30)"
        )

    status = namespaced(commands.add_parser("status", help="breakers, state, trips, last reason"))
    status.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    status.set_defaults(handler=_status)

    explain_ = namespaced(
        commands.add_parser("explain", help="a breaker's evidence and actions as a timeline")
    )
    explain_.add_argument("breaker", help="the Breaker (or the workload it guards)")
    explain_.set_defaults(handler=_explain)

    reset = namespaced(
        commands.add_parser("reset", help="close a breaker and undo everything it did")
    )
    reset.add_argument("target", metavar="BREAKER|WORKLOAD", help="a Breaker, or a workload")
    waiting(reset)
    reset.set_defaults(handler=_reset)

    trip = namespaced(commands.add_parser("trip", help="force a workload's breakers open"))
    trip.add_argument("workload", help="the guarded workload")
    trip.add_argument("--reason", required=True, help="why (shown as REASON and in Events)")
    waiting(trip)
    trip.set_defaults(handler=_trip)

    egress = namespaced(
        commands.add_parser(
            "egress", help="what a pod can reach, across every NetworkPolicy of its namespace"
        )
    )
    egress.add_argument("pod", help="the pod's name")
    egress.add_argument(
        "--to", action="append", metavar="IP:PORT", help="check one destination (repeatable)"
    )
    egress.set_defaults(handler=_egress)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except PluginError as error:
        print(f"kubectl breaker: {error}", file=sys.stderr)
        return 1
    except urllib3.exceptions.HTTPError as error:
        print(
            f"kubectl breaker: cannot reach the API server ({error}): is the cluster up, and "
            "is KUBECONFIG the one you mean?",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    return code
