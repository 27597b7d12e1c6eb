"""Sharding the breakers by namespace: what a shard may run, how shards count a cluster
policy together, and how a shard learns whom the queue (run elsewhere) handed GPUs to."""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
import pytest

from breaker import runner, serving
from breaker.circuit.tally import policy_status_patch
from breaker.cli import main
from breaker.controllers import config
from breaker.serving import Serving
from breaker.training import queue

T0 = dt.datetime(2026, 11, 30, 12, 0, 0, 500_000, tzinfo=dt.UTC)


def test_a_shard_runs_the_breakers_of_its_namespaces_only() -> None:
    shard = Serving.of(["breakers"], ["team-a-*"], "a")
    assert shard.breakers()
    assert not shard.queue
    assert shard.breakers(namespace="team-a-1")
    assert not shard.breakers(namespace="team-b")
    assert shard.here(namespace=None)  # cluster-scoped objects are every shard's
    assert shard.shard == "a"


def test_the_queue_alone_serves_every_namespace() -> None:
    alone = Serving.of(["queue"], [], None)
    assert alone.queue
    assert not alone.breakers(namespace="team-a-1")
    assert alone.here(namespace="anything")


def test_the_kopf_filters_read_what_the_operator_serves_from_its_memo() -> None:
    memo = kopf.Memo(config=config.OperatorConfig(serving=Serving.of(["breakers"], ["a-*"], "a")))
    assert config.serves_breakers(memo=memo, namespace="a-1", name="x")
    assert not config.serves_breakers(memo=memo, namespace="b-1")
    assert not config.serves_queue(memo=memo)
    assert config.here(memo=memo, namespace=None)
    unconfigured = kopf.Memo()  # the defaults: everything, everywhere
    assert config.serves_breakers(memo=unconfigured, namespace="b-1")
    assert config.serves_queue(memo=unconfigured)


@pytest.mark.parametrize(
    ("namespace", "patterns", "matched"),
    [
        ("team-a-1", ["team-a-*"], True),
        ("research", ["team-a-*", "research"], True),
        ("research", ["team-a-*,research"], False),  # one pattern: a second glob adds nothing
        ("team-b", ["*,!team-a-*,!research"], True),
        ("team-a-7", ["*,!team-a-*,!research"], False),
        ("research", ["*,!team-a-*,!research"], False),
        ("Team-A-1", ["team-a-*"], False),
    ],
)
def test_namespaces_match_as_kopf_matches_them(
    namespace: str, patterns: list[str], matched: bool
) -> None:
    from kopf._cogs.structs.references import NamespaceName, match_namespace

    assert serving.matches(namespace, patterns) is matched
    kopf = any(match_namespace(NamespaceName(namespace), p) for p in patterns)
    assert kopf is matched


def test_exact_namespaces_are_watched_one_by_one_and_globs_cluster_wide() -> None:
    assert Serving.of(["breakers"], ["fleet-0", "fleet-2"], "a").watched_namespaces() == [
        "fleet-0",
        "fleet-2",
    ]
    assert Serving.of(["breakers"], ["fleet-0", "team-*"], "a").watched_namespaces() is None
    assert Serving.of(["breakers"], ["*,!fleet-0"], "rest").watched_namespaces() is None


@pytest.mark.parametrize(
    ("parts", "namespaces", "shard", "says"),
    [
        (["queue"], ["team-a-*"], "a", "needs every namespace"),
        (["breakers", "queue"], ["team-a-*"], "a", "needs every namespace"),
        (["breakers"], ["team-a-*"], None, "--shard and --shard-namespaces go together"),
        (["breakers"], [], "a", "--shard and --shard-namespaces go together"),
        (["scheduler"], [], None, "name one or more of breakers, queue"),
        ([], [], None, "name one or more of breakers, queue"),
    ],
)
def test_combinations_that_cannot_work_say_what_to_do(
    parts: list[str], namespaces: list[str], shard: str | None, says: str
) -> None:
    with pytest.raises(serving.ServingError, match=says):
        Serving.of(parts, namespaces, shard)


def test_breaker_run_refuses_a_sharded_queue_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["run", "--serve", "queue", "--shard", "a", "--shard-namespaces", "team-a-*"])
    assert code == 2
    assert "the TrainingJob queue" in capsys.readouterr().err


TALLY = {"breakers": 3, "open": 1, "unknown": 0}


def test_unsharded_counts_are_written_when_they_differ() -> None:
    assert policy_status_patch(TALLY, {}, None) == TALLY
    assert policy_status_patch(TALLY, dict(TALLY), None) is None


def test_a_shard_writes_its_count_and_the_sum_of_all_seen() -> None:
    current = {
        "breakers": 5,
        "open": 0,
        "unknown": 2,
        "shards": {"b": {"breakers": 5, "open": 0, "unknown": 2}},
    }
    patch = policy_status_patch(TALLY, current, "a")
    assert patch == {
        "breakers": 8,
        "open": 1,
        "unknown": 2,
        "shards": {"a": {**TALLY, "incomplete": None}},
        "incomplete": None,
    }


def test_shards_settle_without_writing_again() -> None:
    b = {"breakers": 5, "open": 0, "unknown": 2}
    settled = {"breakers": 8, "open": 1, "unknown": 2, "shards": {"a": TALLY, "b": b}}
    assert policy_status_patch(TALLY, settled, "a") is None
    assert policy_status_patch(b, settled, "b") is None


def test_a_total_written_on_a_stale_view_is_corrected_by_the_next_look() -> None:
    # b wrote its new count with a's old one: the totals are short; a's next look fixes them.
    stale = {
        "breakers": 6,
        "open": 0,
        "unknown": 2,
        "shards": {"a": TALLY, "b": {"breakers": 5, "open": 0, "unknown": 2}},
    }
    stale["breakers"] = 7
    assert policy_status_patch(TALLY, stale, "a") == {
        "breakers": 8,
        "open": 1,
        "unknown": 2,
        "shards": {"a": {**TALLY, "incomplete": None}},
        "incomplete": None,
    }


def test_two_shards_one_with_partial_answers_each_keep_their_note_and_settle() -> None:
    """One shard's answers partial, the other's whole: each writes its own note, the
    top-level one is both; neither undoes the other's, so both settle."""
    b = {"breakers": 5, "open": 0, "unknown": 2}
    status: dict[str, Any] = {
        "breakers": 8,
        "open": 1,
        "unknown": 2,
        "shards": {"a": TALLY, "b": b},
    }
    note = "pool: store 127.0.0.1:20901 did not answer"
    patch = policy_status_patch(TALLY, status, "a", note)
    assert patch is not None
    assert patch["shards"] == {"a": {**TALLY, "incomplete": note}}
    assert patch["incomplete"] == f"a: {note}"
    status = {**status, **patch, "shards": {"a": {**TALLY, "incomplete": note}, "b": b}}
    assert policy_status_patch(b, status, "b", None) is None  # b's whole answers: no write
    assert policy_status_patch(TALLY, status, "a", note) is None
    # a's answers whole again: its note goes, and with it the top-level one.
    cleared = policy_status_patch(TALLY, status, "a", None)
    assert cleared is not None
    assert cleared["shards"] == {"a": {**TALLY, "incomplete": None}}
    assert cleared["incomplete"] is None


def tj(
    name: str, namespace: str, state: str, admitted: dt.datetime | None = None
) -> dict[str, Any]:
    status: dict[str, Any] = {"state": state}
    if admitted is not None:
        status["admittedAt"] = admitted.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"name": name, "namespace": namespace}, "status": status}


def test_admissions_are_read_from_status_to_the_second() -> None:
    bodies = [
        tj("same-second", "b", "Admitted", T0),
        tj("later", "c", "Running", T0 + dt.timedelta(seconds=3)),
        tj("before", "d", "Running", T0 - dt.timedelta(seconds=1)),
        tj("queued", "e", "Queued"),
        tj("finished", "f", "Succeeded", T0 + dt.timedelta(seconds=3)),
        {"metadata": {"name": "new", "namespace": "g"}},
    ]
    assert queue.admitted_since(bodies, T0) == [("b", "same-second"), ("c", "later")]
    assert queue.waiting(bodies) == [("e", "queued")]


@pytest.fixture
def registry() -> Any:
    """kopf's registry as the controllers filled it, put back after the test."""
    found = kopf.get_default_registry()
    parts = runner.resource_registries(found)
    saved = [list(handlers._handlers) for handlers in parts]
    yield found
    for handlers, kept in zip(parts, saved, strict=True):
        handlers._handlers[:] = kept


def watched_by(registry: Any, parts: list[str]) -> set[str]:
    runner.drop_unserved(registry, Serving.of(parts, [], None))
    return set(runner.watched_kinds(registry))


def test_the_queue_alone_watches_only_the_kinds_the_queue_reads(registry: Any) -> None:
    queue = watched_by(registry, ["queue"])
    assert queue == {
        "trainingjobs.breaker.dev",
        "jobs.batch",
        "pods",
        "nodes",
        "resourcequotas",
        "networkpolicies.networking.k8s.io",
        "breakers.breaker.dev",  # a reset's reclaim debt
        "clusterbreakerpolicies.breaker.dev",  # the queue writes their status
    }
    assert runner.drop_unserved(registry, Serving()) == 0  # what is left is all served


def test_the_combined_operator_drops_nothing(registry: Any) -> None:
    assert runner.drop_unserved(registry, Serving()) == 0


def test_a_breakers_shard_watches_no_node(registry: Any) -> None:
    everything = set(runner.watched_kinds(registry))
    shard = watched_by(registry, ["breakers"])
    assert "nodes" not in shard
    assert {"pods", "services", "breakerholds.breaker.dev", "namespaces"} <= shard
    assert everything - shard == {"nodes"}


def test_a_glob_shard_leaves_the_other_shards_objects_diff_base_alone() -> None:
    """kopf writes its diff base on every object whose change it processed, filtered
    handlers or not: another shard's BreakerPolicy edited would look unchanged to it."""
    rest = runner.ShardDiffBase(Serving.of(["breakers"], ["*,!team-a-*"], "rest"))
    essence: Any = {"spec": {"allowDNS": False}}
    for namespace, written in (("team-a-1", False), ("team-b", True)):
        body = kopf.Body({"metadata": {"namespace": namespace, "name": "p"}})
        patch = kopf.Patch()
        rest.store(body=body, patch=patch, essence=essence)
        assert bool(patch) is written, namespace
