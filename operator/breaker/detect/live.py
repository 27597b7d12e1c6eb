"""One live evaluation: one instant query per signal, for every pod at once, then the engine.

This is the only place the live loop touches Prometheus for detection; what it decides,
``driver.tick`` decides, as for ``breaker backtest`` and the benchmarks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from breaker.detect import driver, engine
from breaker.detect.prom import Answer, LiveProm, Prom, QueryError, Target

Unit = TypeVar("Unit", bound=Hashable)


@dataclass
class Evaluation(Generic[Unit]):
    firing: dict[engine.PodKey, list[engine.Firing]]
    decisions: dict[Unit, engine.Decision]
    errors: dict[str, str] = field(default_factory=dict)  # signal -> why it has no data
    queries: int = 0


Readings = dict[str, Mapping[engine.PodKey, engine.Sample] | None]


def read(
    prom: Prom, detector: engine.Detector, at: float | None = None
) -> tuple[Readings, dict[str, str], int]:
    """Every signal's current vector (None where the query failed), the errors as
    ``"Kind: message"`` (QueryError's kinds), and the count."""
    readings: Readings = {}
    errors: dict[str, str] = {}
    for signal in detector.signals:
        try:
            answer: list[dict[str, Any]] | QueryError = prom.instant(signal.query, at)
        except QueryError as error:
            answer = error
        _take(signal, answer, readings, errors)
    return readings, errors, len(detector.signals)


@dataclass
class Read:
    """What one evaluation read: every signal's vector (None where its query failed), the
    errors as ``"Kind: message"``, and the warnings of the answers that were partial."""

    readings: Readings
    errors: dict[str, str]
    partial: dict[str, str]
    queries: int


async def aread(prom: LiveProm, detector: engine.Detector, at: float, asked: Asked) -> Read:
    """``read`` for the live loop: every signal asked at once, each identical query of this
    instant (another policy's too) sent once. An answer with warnings is read as partial
    (a Thanos store down): its missing pods keep their clocks."""
    answers = await asyncio.gather(
        *(asked.ask(prom, signal.query, at) for signal in detector.signals),
        return_exceptions=True,
    )
    readings: Readings = {}
    errors: dict[str, str] = {}
    partial: dict[str, str] = {}
    for signal, answer in zip(detector.signals, answers, strict=True):
        if isinstance(answer, BaseException) and not isinstance(answer, QueryError):
            raise answer
        if isinstance(answer, Answer):
            # Never read as whole: a Thanos querier answers in part with warnings even when
            # asked not to (a replica of a deduplicated group down, or every store).
            # Prometheus's own annotations of a query ("PromQL warning: ...") are not that.
            missing = [w for w in answer.warnings if not w.startswith(PROMQL_ANNOTATION)]
            if missing:
                partial[signal.name] = missing[0]
            _take(signal, answer.result, readings, errors, partial=signal.name in partial)
        else:
            _take(signal, answer, readings, errors)
    return Read(readings, errors, partial, len(detector.signals))


def unread(detector: engine.Detector, error: QueryError) -> Read:
    """An evaluation that could not ask (its Secret unreadable): every signal unknown."""
    failed = f"{error.kind}: {error}"
    return Read(
        {s.name: None for s in detector.signals}, {s.name: failed for s in detector.signals}, {}, 0
    )


def _take(
    signal: engine.SignalSpec,
    answer: list[dict[str, Any]] | QueryError,
    readings: Readings,
    errors: dict[str, str],
    partial: bool = False,
) -> None:
    readings[signal.name] = None
    if isinstance(answer, QueryError):
        errors[signal.name] = f"{answer.kind}: {answer}"
        return
    try:
        samples = engine.read(signal, answer)
        readings[signal.name] = engine.Partial(samples) if partial else samples
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        errors[signal.name] = f"BadResponse: {signal.query[:120]}: series unreadable: {error}"


PROMQL_ANNOTATION = "PromQL "  # how Prometheus's query annotations begin


class Asked:
    """The queries of the instants being evaluated, shared: the same PromQL to the same
    server about the same instant is sent once, whatever the number of policies (or
    shards of one operator) that use it. The answers of an earlier instant are let go
    when a later one is asked about."""

    def __init__(self) -> None:
        self.latest = float("-inf")
        self.pending: dict[tuple[Target, str, float], asyncio.Task[Answer]] = {}
        self.sent = 0  # queries sent to a server (a benchmark's and a test's count)

    async def ask(self, prom: LiveProm, query: str, at: float) -> Answer:
        if at > self.latest:
            self.latest = at
            for key in [k for k, task in self.pending.items() if k[2] < at and task.done()]:
                del self.pending[key]
        key = (prom.target, query, at)
        task = self.pending.get(key)
        if task is None:
            task = asyncio.create_task(prom.instant(query, at), name=f"query {query[:40]}")
            task.add_done_callback(_retrieved)
            self.pending[key] = task
            self.sent += 1
        # One policy's evaluation cancelled (its policy changed) cancels no other's query.
        return await asyncio.shield(task)

    async def cancel(self) -> None:
        """At shutdown: the queries still out are given up."""
        for task in self.pending.values():
            task.cancel()
        await asyncio.gather(*self.pending.values(), return_exceptions=True)
        self.pending.clear()


def _retrieved(task: asyncio.Task[Any]) -> None:
    """Every asker may have gone: the error is theirs, never asyncio's to warn about."""
    if not task.cancelled():
        task.exception()


def evaluate(
    prom: Prom,
    detector: engine.Detector,
    state: engine.State,
    now: float,
    unit_of: Callable[[engine.PodKey], Unit | None],
    units_on_node: Callable[[], Mapping[str, Iterable[Unit]]] | None = None,
) -> Evaluation[Unit]:
    """``units_on_node`` is asked only when a node-scoped signal fires."""
    readings, errors, queries = read(prom, detector, now)
    firing, decisions = driver.tick(detector, state, readings, now, unit_of, units_on_node)
    return Evaluation(firing, decisions, errors, queries)
