"""The breaker loop's detection half: each policy compiled once into typed settings and a
detector, and every due policy evaluated with one query per signal for all its pods, in a
task beside the breaker loop (``Evaluator``), never in front of it.

The controller hands in what it reads from kopf's indexes (each policy's Breakers, the pod
index, the owner lookup); the decisions come from ``detect.driver``, as for backtests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from breaker import metrics
from breaker.actions.settings import ActionSettings
from breaker.api.common import parse_duration
from breaker.api.policy import (
    BreakerPolicySpec,
    ClusterBreakerPolicySpec,
    PolicySpecBase,
    PrometheusSettings,
    SecretKeyRef,
)
from breaker.circuit import machine, plan
from breaker.circuit.ownership import WorkloadKey, workload_of
from breaker.circuit.views import PodView
from breaker.controllers.inventory import items, only
from breaker.controllers.secrets import SecretUnreadable
from breaker.detect import driver, engine, live
from breaker.detect.policy_check import problems
from breaker.detect.prom import LiveProm, QueryError, Target, tls_context

log = logging.getLogger("breaker.breakers")

BreakerKey = tuple[str, str]
PolicyKey = tuple[str, str | None, str]  # (kind, namespace, name)
# A policy's Secret key: (ref, the policy's namespace or None, several lines allowed).
ReadSecret = Callable[[SecretKeyRef, str | None, bool], Awaitable[str]]
SECRET_TTL_SECONDS = 300.0  # a rotated token or CA is read again within this
SECRET_RETRY_SECONDS = 30.0  # an unreadable one is tried again after this
RETRY_SECONDS = 5.0  # after a turn of the evaluation loop failed


@dataclass
class Compiled:
    generation: int | None
    detector: engine.Detector | None
    spec: PolicySpecBase | None
    problem: str | None
    kinds: frozenset[str] = frozenset()  # the workload kinds it targets
    # The actions and the machine's settings, compiled once from the validated spec.
    actions: ActionSettings = dataclasses.field(default_factory=ActionSettings)
    settings: machine.Settings = dataclasses.field(default_factory=machine.Settings)
    state: engine.State = dataclasses.field(default_factory=engine.State)
    due: float = 0.0  # monotonic time of the next evaluation
    known: bool = True  # the last evaluation read every signal
    error: str | None = None  # when it did not: the first failure, "Kind: message"
    partial: str | None = None  # when some answers were partial: which, and the warning


@dataclass(frozen=True)
class Trip:
    """What an evaluation saw, for the actions and the evidence."""

    decision: engine.Decision
    detector: engine.Detector
    seen_at: float  # monotonic, when the evaluation returned


class Policies:
    """The compiled policies, their ``for`` clocks and their Prometheus clients."""

    def __init__(
        self,
        prometheus_url: str,
        connect: Callable[[Target], LiveProm] = LiveProm,
        read_secret: ReadSecret | None = None,
    ) -> None:
        self.prometheus_url = prometheus_url  # where a policy without its own url asks
        self.connect = connect  # a client for a target
        self.read_secret = read_secret  # a policy's Secret key: (ref, namespace, lines)
        self.compiled: dict[PolicyKey, Compiled] = {}
        self.proms: dict[Target, LiveProm] = {}
        self.used: dict[PolicyKey, Target] = {}  # each policy's target, as last resolved
        # (namespace, name, key) -> (monotonic time read, the text or why it is unreadable)
        self.secrets: dict[tuple[str | None, str, str], tuple[float, str | SecretUnreadable]] = {}

    def next_due(self) -> float:
        """When the next policy is due to be evaluated (monotonic); within a minute."""
        return min(
            (c.due for c in self.compiled.values() if c.detector),
            default=time.monotonic() + 60,
        )

    def compile(self, bodies: Iterable[tuple[PolicyKey, dict[str, Any]]]) -> None:
        """Compile each policy once per generation into typed settings and a detector."""
        seen: set[PolicyKey] = set()
        for key, body in bodies:
            seen.add(key)
            generation = body["metadata"].get("generation")
            current = self.compiled.get(key)
            if current is not None and current.generation == generation:
                continue
            model = (
                ClusterBreakerPolicySpec if key[0] == "ClusterBreakerPolicy" else BreakerPolicySpec
            )
            try:
                spec = model.model_validate(body["spec"])
                found = problems(spec)
                detector = None if found else engine.compile_policy(spec)
                problem = "; ".join(found) or None
            # Validation (pydantic's errors are ValueErrors) or compilation refused it: a
            # policy the operator cannot use is skipped, loudly, and said in its status.
            except (ValueError, KeyError, TypeError, ArithmeticError) as error:
                spec, detector, problem = None, None, str(error)
            if problem:
                log.warning("%s: not evaluated: %s", policy_label(key), problem[:300])
            # A changed policy starts its `for` clocks afresh: its conditions changed too.
            kinds = frozenset(spec.targets.kinds if spec else ["TrainingJob"])
            self.compiled[key] = Compiled(
                generation,
                detector,
                spec,
                problem,
                kinds,
                actions=ActionSettings.compile(spec, body["spec"].get("actions")),
                settings=plan.settings_of(spec),
            )
        for key in set(self.compiled) - seen:
            del self.compiled[key]
            self.used.pop(key, None)

    def due(
        self,
        breakers_of: Mapping[PolicyKey, list[tuple[BreakerKey, dict[str, Any]]]],
        running: Container[PolicyKey],
    ) -> list[Due]:
        """The policies due now that guard something and are not being evaluated still,
        each with its Prometheus and the instant to ask about; each one's next evaluation
        set on its interval's grid of wall-clock time."""
        now, wall = time.monotonic(), time.time()
        wanted = []
        for key, compiled in self.compiled.items():
            if compiled.detector is None or compiled.spec is None or compiled.due > now:
                continue
            settings = compiled.spec.prometheus
            at, following = instants(wall, seconds(settings.interval))
            compiled.due = now + (following - wall)
            if key in running or not breakers_of.get(key):
                continue  # one evaluation of a policy at a time; nothing to guard
            wanted.append(Due(key, compiled, compiled.detector, settings, at))
        return wanted

    async def client(self, key: PolicyKey, settings: PrometheusSettings) -> LiveProm:
        """The client of a policy's target, its Secrets read (again every few minutes: a
        rotated token is picked up). A Secret it cannot read is a QueryError of kind
        ``Misconfigured`` that says why and what to grant."""
        target = Target(
            settings.url or self.prometheus_url,
            seconds(settings.timeout),
            headers=tuple(sorted(settings.headers.items())),
            token=await self._secret(key, settings.bearer_token_secret_ref),
            ca=await self._secret(key, settings.tls.ca_secret_ref, lines=True),
            server_name=settings.tls.server_name,
            verify=not settings.tls.insecure_skip_verify,
            partial_response=settings.partial_response,
        )
        self.used[key] = target
        if target not in self.proms:
            try:
                tls_context(target)  # a CA bundle that does not load says so, here
            except (ssl.SSLError, ValueError) as error:
                why = f"tls.caSecretRef: not a PEM CA bundle: {error}"
                raise QueryError(why, "Misconfigured") from error
            self.proms[target] = self.connect(target)
        return self.proms[target]

    async def _secret(
        self, key: PolicyKey, ref: SecretKeyRef | None, lines: bool = False
    ) -> str | None:
        if ref is None:
            return None
        cached = (key[1], ref.name, ref.key)
        now = time.monotonic()
        read_at, found = self.secrets.get(cached, (float("-inf"), ""))
        fresh = SECRET_RETRY_SECONDS if isinstance(found, SecretUnreadable) else SECRET_TTL_SECONDS
        if now - read_at >= fresh:
            try:
                if self.read_secret is None:
                    raise SecretUnreadable("this operator reads no Secrets")
                found = await self.read_secret(ref, key[1], lines)
            except SecretUnreadable as error:
                found = error
            self.secrets[cached] = (now, found)
        if isinstance(found, SecretUnreadable):
            raise QueryError(f"{ref.name}: {found}", "Misconfigured")
        return found

    async def close_unused(self) -> None:
        """Close the clients no policy uses now (its token rotated, its url changed)."""
        used = set(self.used.values())
        for target in [t for t in self.proms if t not in used]:
            await self.proms.pop(target).close()

    async def close(self) -> None:
        for prom in self.proms.values():
            await prom.close()


# How far off its interval's grid an evaluation may start and still ask about the grid's
# instant (the loop's timers fire a little early or late).
GRID_SLACK_SECONDS = 0.1


def instants(now: float, interval: float) -> tuple[float, float]:
    """The instant an evaluation starting at ``now`` (seconds since the epoch) asks about,
    and when the next one starts: the instants are multiples of ``interval``, so policies
    of one interval ask about the same ones and their identical queries are sent once; a
    policy's first evaluation, off the grid, asks about ``now``."""
    tick = math.floor((now + GRID_SLACK_SECONDS) / interval) * interval
    at = tick if now - tick <= GRID_SLACK_SECONDS else now
    return at, tick + interval


@dataclass(frozen=True)
class Due:
    key: PolicyKey
    compiled: Compiled
    detector: engine.Detector
    settings: PrometheusSettings
    at: float  # seconds since the epoch: the instant asked about


@dataclass(frozen=True)
class Inputs:
    """What an evaluation reads from kopf's indexes, on the event loop: each policy's
    Breakers, the pod index and the owner lookup."""

    breakers_of: Mapping[PolicyKey, list[tuple[BreakerKey, dict[str, Any]]]]
    pods: kopf.Index[Any, Any]
    owners: Any


class Evaluator:
    """Evaluation beside convergence, never in front of it. Each due policy is evaluated
    in a task of its own; what it decides is handed over (``take``) and the breaker loop
    nudged as soon as that policy's answers are in, whatever the others' Prometheus does.
    An admin's override or reset is converged meanwhile: no query is waited on there."""

    def __init__(
        self,
        policies: Policies,
        inputs: Callable[[], Inputs],
        handed: Callable[[], None],
        ready: Callable[[], bool],
    ) -> None:
        self.policies = policies
        self.inputs = inputs  # compiles the policies too
        self.handed = handed
        self.ready = ready  # the indexes are filled (a standby's never are)
        self.trips: dict[BreakerKey, Trip] = {}
        self.running: dict[PolicyKey, asyncio.Task[None]] = {}
        self.asked = live.Asked()
        self.wake = asyncio.Event()

    def nudge(self) -> None:
        """A policy or a Breaker may have changed: look at what is due now."""
        self.wake.set()

    def take(self) -> dict[BreakerKey, Trip]:
        """The trips decided since the last take."""
        trips, self.trips = self.trips, {}
        return trips

    async def run(self) -> None:
        try:
            while True:
                try:
                    if self.ready():
                        self.start_due()
                    await self.policies.close_unused()
                except Exception:  # a bug: said, and the loop goes on (detection must)
                    log.exception("evaluation loop: a turn failed; going on")
                    await asyncio.sleep(RETRY_SECONDS)
                timeout = max(0.0, self.policies.next_due() - time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=timeout)
                self.wake.clear()
        finally:
            for task in self.running.values():
                task.cancel()
            await asyncio.gather(*self.running.values(), return_exceptions=True)
            await self.asked.cancel()
            await self.policies.close()

    def start_due(self) -> None:
        for due in self.policies.due(self.inputs().breakers_of, self.running):
            label = policy_label(due.key)
            self.running[due.key] = asyncio.create_task(
                self._evaluate(due), name=f"evaluate {label}"
            )

    async def _evaluate(self, due: Due) -> None:
        started = time.monotonic()
        try:
            try:
                prom = await self.policies.client(due.key, due.settings)
                read = await live.aread(prom, due.detector, due.at, self.asked)
            except QueryError as error:  # a Secret or CA it needs is unusable
                read = live.unread(due.detector, error)
            except Exception as error:  # a bug, not Prometheus: said, and read as Unknown
                log.exception("%s: evaluation failed", policy_label(due.key))
                failed = QueryError(f"evaluation failed: {type(error).__name__}", "Internal")
                read = live.unread(due.detector, failed)
            self._decide(due, read, started)
        except Exception:
            log.exception("%s: evaluation failed", policy_label(due.key))
        finally:
            self.running.pop(due.key, None)

    def _decide(self, due: Due, read: live.Read, started: float) -> None:
        inputs = self.inputs()  # read now: the pods and Breakers as they are
        if self.policies.compiled.get(due.key) is not due.compiled:
            return  # the policy changed (or went) while its queries ran: its clocks restart
        compiled = due.compiled
        unit_of, units_on_node = _units(inputs.pods, inputs.owners, compiled.kinds)
        firing, decisions = driver.tick(
            due.detector, compiled.state, read.readings, due.at, unit_of, units_on_node
        )
        seen_at = time.monotonic()
        _observe(
            policy_label(due.key),
            live.Evaluation(firing, decisions, read.errors, read.queries),
            seen_at - started,
        )
        compiled.known = not read.errors
        compiled.error = next(iter(read.errors.values()), None)
        compiled.partial = _partial(read.partial)
        by_workload = {unit: found for unit, found in decisions.items() if unit}
        for breaker_key, body in inputs.breakers_of.get(due.key, []):
            target = body["spec"]["targetRef"]
            unit = (breaker_key[0], target["kind"], target["name"])
            if unit in by_workload:
                self.trips[breaker_key] = Trip(by_workload[unit], due.detector, seen_at)
        self.handed()


def policy_key(ref: Mapping[str, Any]) -> PolicyKey:
    return (ref["kind"], ref.get("namespace"), ref["name"])


def policy_label(key: PolicyKey) -> str:
    return f"{key[1]}/{key[2]}" if key[1] else key[2]


def seconds(duration: str) -> float:
    return parse_duration(duration).total_seconds()


def _units(
    pods: kopf.Index[Any, Any], owners: Any, kinds: frozenset[str]
) -> tuple[Callable[[engine.PodKey], Any], Callable[[], dict[str, set[WorkloadKey]]]]:
    """How a pod names the workload this policy guards (its kinds), and the workloads on
    each node: from the pod index, as the driver asks."""

    def unit_of(pod_key: engine.PodKey) -> Any:
        pod: PodView | None = only(pods, pod_key)
        if pod is None:
            return None
        return workload_of(pod.namespace, pod.owner, owners, kinds)

    def units_on_node() -> dict[str, set[WorkloadKey]]:
        found: dict[str, set[WorkloadKey]] = {}
        for pod_key, pod in items(pods):
            unit = unit_of(pod_key) if pod.node else None
            if unit is not None and pod.node is not None:
                found.setdefault(pod.node, set()).add(unit)
        return found

    return unit_of, units_on_node


def _partial(warnings: Mapping[str, str]) -> str | None:
    """What a policy's status says of partial answers: the signals, the first warning."""
    if not warnings:
        return None
    names = ", ".join(sorted(warnings))
    first = next(iter(warnings.values()))
    return (
        f"partial answers for {names} (the pods missing from them are read as Unknown: "
        f"their clocks kept): {first}"
    )[:1024]


def _observe(label: str, evaluation: live.Evaluation[Any], took: float) -> None:
    """The evaluation's metrics, and a warning naming the first signal it could not read."""
    metrics.EVALUATION_SECONDS.labels(label).observe(took)
    metrics.QUERIES.labels(label).set(evaluation.queries)
    for signal in evaluation.errors:
        metrics.PROMETHEUS_ERRORS.labels(label, signal).inc()
    if evaluation.errors:
        log.warning(
            "%s: %d of %d signals unreadable: %s",
            label,
            len(evaluation.errors),
            evaluation.queries,
            next(iter(evaluation.errors.values()))[:300],
        )
