"""Fakes of the Kubernetes API, of kopf's indexes and of time, for unit tests of the
controllers (no cluster, no network, no sleeping).

- ``FakeCluster`` is an in-memory object store behind a real ``kubernetes.client.ApiClient``:
  only ``ApiClient.call_api`` (the one method that hands a serialised request to urllib3)
  is replaced, so every typed API class, its serialisation, the content types it picks and
  the deserialisation of answers and errors run as they do against a real API server. It
  serves get, list, create, replace, merge and JSON patches (and a ``/status``
  subresource) and delete of any resource by its URL, with resourceVersions, 404s and
  409s, plus discovery (``GET /apis``); and it fails the N-th call matching a method and a
  path with a given status when a test asks it to.
- ``FakeIndexes`` are the kopf indexes the breaker loop reads, filled by calling the
  operator's own index functions (``controllers/inventory.py``) on the store's objects,
  so the views are the ones kopf would hold.
- ``Clock`` stands in for ``time`` and ``datetime.now`` in a module under test.
- ``FakeQueue`` is the TrainingJob queue as the breaker loop asks it (``Handoffs``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import threading
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import kopf
import pytest
from kubernetes import client
from kubernetes.client import rest

from breaker.actions import kueue
from breaker.actions.pause import KINDS
from breaker.api.quantity import pod_gpus
from breaker.constants import JOB_LABEL
from breaker.controllers import inventory, trainingjobs

Json = dict[str, Any]
ResourceKey = tuple[str, str]  # (group, plural); "" for the core group
ObjectKey = tuple[str | None, str]  # (namespace, name)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
CLUSTER_SCOPED = {("", "nodes"), ("", "namespaces")}


@dataclass
class Call:
    method: str
    path: str
    content_type: str | None
    body: Any
    status: int = 0


@dataclass
class Fault:
    """Answer ``status`` to the ``nth`` call (counting from 1) that matches, ``times`` times."""

    method: str
    path: re.Pattern[str]
    status: int
    nth: int = 1
    times: int = 1
    seen: int = 0
    used: int = 0

    def matches(self, method: str, path: str) -> bool:
        if method != self.method or not self.path.search(path):
            return False
        self.seen += 1
        if self.seen >= self.nth and self.used < self.times:
            self.used += 1
            return True
        return False


@dataclass
class _Answer:
    """What urllib3 would hand back: the shape ``rest.RESTResponse`` wraps."""

    status: int
    reason: str
    data: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


@dataclass(frozen=True)
class _Target:
    resource: ResourceKey
    namespace: str | None
    name: str | None
    subresource: str | None


def _target(path: str) -> _Target | None:
    """Which resource a URL path names, or None for discovery."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest_parts = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest_parts = parts[1], parts[3:]
    else:
        return None
    namespace = None
    if rest_parts[:1] == ["namespaces"] and len(rest_parts) >= 3:
        namespace, rest_parts = rest_parts[1], rest_parts[2:]
    plural = rest_parts[0]
    name = rest_parts[1] if len(rest_parts) > 1 else None
    sub = rest_parts[2] if len(rest_parts) > 2 else None
    return _Target((group, plural), namespace, name, sub)


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386: a JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


def _json_patch(target: Json, operations: list[Json]) -> Json:
    """RFC 6902, the operations the operator sends: add, replace, remove, test."""
    result = copy.deepcopy(target)
    for op in operations:
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        cursor: Any = result
        for part in parents:
            cursor = cursor[int(part)] if isinstance(cursor, list) else cursor[part]
        key: Any = int(last) if isinstance(cursor, list) and last != "-" else last
        if op["op"] == "test":
            if cursor[key] != op["value"]:
                raise _Refusal(422, "Invalid", f"test failed at {op['path']}")
        elif op["op"] == "remove":
            del cursor[key]
        elif isinstance(cursor, list) and op["op"] == "add":
            cursor.insert(len(cursor) if key == "-" else key, op["value"])
        else:
            cursor[key] = op["value"]
    return result


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _Client(client.ApiClient):
    """A real ApiClient whose requests go to the fake store instead of urllib3."""

    def __init__(self, cluster: FakeCluster) -> None:
        super().__init__()
        self.cluster = cluster

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Mapping[str, str] | None = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> rest.RESTResponse:
        return self.cluster.call_api(method, url, header_params, body)


class FakeCluster:
    """The API server's store, in memory, behind ``self.api`` (a real ApiClient)."""

    def __init__(self) -> None:
        self.objects: dict[ResourceKey, dict[ObjectKey, Json]] = {}
        self.groups: dict[str, str] = {"breaker.dev": "v1alpha1"}  # discovery answers
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.version = 0
        self.lock = threading.Lock()  # calls come from asyncio.to_thread's workers
        self.api: client.ApiClient = _Client(self)

    # -- for tests --------------------------------------------------------------------

    def put(self, resource: ResourceKey, body: Json) -> Json:
        """Create or replace an object as a test sets the scene (no call recorded)."""
        with self.lock:
            meta = body.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
            meta["resourceVersion"] = self._next_version()
            self.objects.setdefault(resource, {})[(meta.get("namespace"), meta["name"])] = body
            return body

    def get(self, resource: ResourceKey, namespace: str | None, name: str) -> Json | None:
        return self.objects.get(resource, {}).get((namespace, name))

    def edit(self, resource: ResourceKey, namespace: str | None, name: str, patch: Json) -> Json:
        """A merge patch by someone else (a tenant, an admin): a new resourceVersion."""
        found = self.get(resource, namespace, name)
        assert found is not None, f"{resource} {namespace}/{name} does not exist"
        return self.put(resource, merge(found, patch))

    def all(self, resource: ResourceKey, namespace: str | None = None) -> list[Json]:
        return [
            body
            for (ns, _), body in sorted(self.objects.get(resource, {}).items(), key=str)
            if namespace is None or ns == namespace
        ]

    def fail(self, method: str, path: str, status: int, nth: int = 1, times: int = 1) -> Fault:
        """Answer ``status`` to the ``nth`` call of ``method`` whose path matches ``path``
        (a regular expression), and to the ``times - 1`` matching calls after it."""
        fault = Fault(method, re.compile(path), status, nth, times)
        self.faults.append(fault)
        return fault

    def requests(self, method: str, path: str = "") -> list[Call]:
        """The calls made so far of ``method`` whose path matches ``path``."""
        pattern = re.compile(path)
        return [c for c in self.calls if c.method == method and pattern.search(c.path)]

    # -- the seam ---------------------------------------------------------------------

    def call_api(
        self,
        method: str,
        url: str,
        header_params: Mapping[str, str] | None,
        body: Any,
    ) -> rest.RESTResponse:
        """``ApiClient.call_api``: one serialised request in, one raw answer out."""
        path = urlsplit(url).path
        content_type = (header_params or {}).get("Content-Type")
        call = Call(method, path, content_type, copy.deepcopy(body))
        with self.lock:
            self.calls.append(call)
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            try:
                if fault is not None:
                    raise _Refusal(fault.status, "InjectedFault", "injected by the test")
                status, answer = self._serve(method, path, content_type, body)
            except _Refusal as refusal:
                status = refusal.status
                answer = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": refusal.message,
                    "reason": refusal.reason,
                    "code": refusal.status,
                }
        call.status = status
        reason = "OK" if status < 300 else str(answer.get("reason", "Error"))
        return rest.RESTResponse(_Answer(status, reason, json.dumps(answer).encode()))

    def _serve(
        self, method: str, path: str, content_type: str | None, body: Any
    ) -> tuple[int, Json]:
        target = _target(path)
        if target is None:
            return 200, self._discovery()
        store = self.objects.setdefault(target.resource, {})
        if target.name is None:
            if method == "GET":
                found = [b for (ns, _), b in store.items() if target.namespace in (None, ns)]
                items = copy.deepcopy(found)
                return 200, {"items": items, "metadata": {"resourceVersion": str(self.version)}}
            if method == "POST":
                return 201, self._create(target, store, body)
            raise _Refusal(405, "MethodNotAllowed", f"{method} on a collection")
        key = (target.namespace, target.name)
        found_body = store.get(key)
        if found_body is None:
            raise _Refusal(404, "NotFound", f"{target.resource[1]} {target.name} not found")
        if method == "GET":
            return 200, copy.deepcopy(found_body)
        if method == "DELETE":
            del store[key]  # no finalizers here: gone at once, the object answered
            return 200, copy.deepcopy(found_body)
        if method == "PUT":
            updated = self._checked(found_body, body)
        elif method == "PATCH":
            updated = self._patched(target, found_body, content_type, body)
        else:
            raise _Refusal(405, "MethodNotAllowed", method)
        updated["metadata"]["resourceVersion"] = self._next_version()
        if (updated.get("spec") != found_body.get("spec")) and target.subresource is None:
            updated["metadata"]["generation"] = found_body["metadata"].get("generation", 1) + 1
        store[key] = updated
        return 200, copy.deepcopy(updated)

    def _create(self, target: _Target, store: dict[ObjectKey, Json], body: Any) -> Json:
        created = copy.deepcopy(body)
        meta = created.setdefault("metadata", {})
        meta["namespace"] = target.namespace
        if target.resource in CLUSTER_SCOPED or target.namespace is None:
            meta.pop("namespace", None)
        key = (target.namespace, meta["name"])
        if key in store:
            raise _Refusal(409, "AlreadyExists", f"{target.resource[1]} {meta['name']} exists")
        meta.update(
            uid=str(uuid.uuid4()),
            generation=1,
            creationTimestamp="2026-01-01T00:00:00Z",
            resourceVersion=self._next_version(),
        )
        store[key] = created
        return copy.deepcopy(created)

    def _checked(self, found: Json, body: Json) -> Json:
        """A replacement, refused (409) if it was read at another resourceVersion."""
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != found["metadata"]["resourceVersion"]:
            raise _Refusal(409, "Conflict", "the object has been modified")
        replaced = copy.deepcopy(body)
        replaced["metadata"] = {**found["metadata"], **replaced.get("metadata", {})}
        return replaced

    def _patched(self, target: _Target, found: Json, content_type: str | None, body: Any) -> Json:
        if content_type == JSON_PATCH:
            if not isinstance(body, list):
                raise _Refusal(400, "BadRequest", "a JSON patch must be a list of operations")
            return _json_patch(found, body)
        if content_type not in (MERGE_PATCH, "application/strategic-merge-patch+json"):
            raise _Refusal(415, "UnsupportedMediaType", str(content_type))
        wanted = ((body or {}).get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != found["metadata"]["resourceVersion"]:
            raise _Refusal(409, "Conflict", "the object has been modified")
        if target.subresource == "status":
            return {**found, "status": merge(found.get("status") or {}, body.get("status"))}
        # Custom resources have the status subresource: the main resource ignores status.
        patch = {k: v for k, v in body.items() if k != "status" or target.resource[0] == ""}
        return dict(merge(found, patch))

    def _discovery(self) -> Json:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}]}
                for g, v in sorted(self.groups.items())
            ],
        }

    def _next_version(self) -> str:
        self.version += 1
        return str(self.version)


# -- kopf's indexes ----------------------------------------------------------------------


class FakeStore(kopf.Store[Any]):
    """The values kopf keeps under one index key."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.values)

    def __contains__(self, value: object) -> bool:
        return value in self.values


class FakeIndex(kopf.Index[Any, Any]):
    """kopf's read-only view of one index: key -> the values stored under it."""

    def __init__(self) -> None:
        self.stores: dict[Any, FakeStore] = {}

    def __getitem__(self, key: Any) -> FakeStore:
        return self.stores[key]

    def __len__(self) -> int:
        return len(self.stores)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.stores)

    def add(self, values: Mapping[Any, Any]) -> None:
        for key, value in values.items():
            self.stores.setdefault(key, FakeStore([])).values.append(value)


Indexer = Callable[[kopf.Body], Any]  # a body -> the awaitable of its index entries
Filter = Callable[[kopf.Body], bool]  # kopf's labels= and when= filters of one index


def _all(body: kopf.Body) -> bool:
    return True


def _by(function: Any) -> Indexer:
    """An index function, called with what kopf would pass it."""

    def index(body: kopf.Body) -> Any:
        return function(
            body=body,
            namespace=body.metadata.namespace,
            name=body.metadata.name,
            meta=body.metadata,
            spec=body.spec,
            status=body.status,
            labels=body.metadata.labels,
            memo=kopf.Memo(),  # the defaults: this operator serves everything
        )

    return index


def _workload_index(kind: str) -> Indexer:
    async def index(body: kopf.Body) -> Any:
        # The one private reach: inventory registers a closure per kind with kopf, and this
        # is the function those closures call.
        return inventory._workload(kind, body)

    return index


@dataclass(frozen=True)
class Indexed:
    resource: ResourceKey
    indexer: Indexer
    only: Filter = _all


BREAKER_INDEXES: dict[str, Indexed] = {
    **{
        f"workloads_{kind.lower()}": Indexed((adapter.group, adapter.plural), _workload_index(kind))
        for kind, adapter in KINDS.items()
    },
    **{
        inventory.owner_index(kind): Indexed((group, plural), _by(inventory._owner))
        for kind, (group, _, plural) in inventory.OWNER_INDEXES.items()
    },
    "breaker_kueue_workloads": Indexed(
        (kueue.GROUP, kueue.WORKLOADS), _by(inventory.breaker_kueue_workloads)
    ),
    "breaker_local_queues": Indexed(
        (kueue.GROUP, kueue.LOCAL_QUEUES), _by(inventory.breaker_local_queues)
    ),
    "breaker_pods": Indexed(("", "pods"), _by(inventory.breaker_pods)),
    "breaker_quarantined": Indexed(("", "pods"), _by(inventory.breaker_quarantined)),
    "breaker_services": Indexed(("", "services"), _by(inventory.breaker_services)),
    "breaker_netpols": Indexed(
        ("networking.k8s.io", "networkpolicies"), _by(inventory.breaker_netpols)
    ),
    "breaker_quotas": Indexed(("", "resourcequotas"), _by(inventory.breaker_quotas)),
    "breaker_namespaces": Indexed(("", "namespaces"), _by(inventory.breaker_namespaces)),
    "breaker_policies": Indexed(
        ("breaker.dev", "breakerpolicies"), _by(inventory.breaker_policies)
    ),
    "breaker_cluster_policies": Indexed(
        ("breaker.dev", "clusterbreakerpolicies"), _by(inventory.breaker_cluster_policies)
    ),
    "breaker_breakers": Indexed(("breaker.dev", "breakers"), _by(inventory.breaker_breakers)),
    "breaker_holds": Indexed(("breaker.dev", "breakerholds"), _by(inventory.breaker_holds)),
}


def _labelled(body: kopf.Body) -> bool:
    return JOB_LABEL in body.metadata.labels


def _gpu_or_training_pod(body: kopf.Body) -> bool:
    return _labelled(body) or pod_gpus(dict(body.spec)) > 0


TRAINING_INDEXES: dict[str, Indexed] = {
    "trainingjobs": Indexed(("breaker.dev", "trainingjobs"), _by(trainingjobs.trainingjobs)),
    "trainingjob_jobs": Indexed(("batch", "jobs"), _by(trainingjobs.trainingjob_jobs), _labelled),
    "trainingjob_netpols": Indexed(
        ("networking.k8s.io", "networkpolicies"), _by(trainingjobs.trainingjob_netpols), _labelled
    ),
    "gpu_pods": Indexed(("", "pods"), _by(trainingjobs.gpu_pods), _gpu_or_training_pod),
    "gpu_nodes": Indexed(("", "nodes"), _by(trainingjobs.gpu_nodes)),
    # The breaker inventory's, which the queue reads where they are (one operator serving both).
    "breaker_quotas": BREAKER_INDEXES["breaker_quotas"],
    "breaker_breakers": BREAKER_INDEXES["breaker_breakers"],
}


class FakeIndexes(dict[str, kopf.Index[Any, Any]]):
    """The indexes a controller reads (by default every one of the breaker loop's,
    ``inventory.INDEX_NAMES``), as kopf would hold them after seeing the store's objects.
    ``refresh`` is the watches catching up."""

    def __init__(self, cluster: FakeCluster, indexes: Mapping[str, Indexed] | None = None) -> None:
        super().__init__()
        self.cluster = cluster
        self.indexes = dict(BREAKER_INDEXES if indexes is None else indexes)

    async def refresh(self) -> None:
        for name, indexed in self.indexes.items():
            index = FakeIndex()
            for body in self.cluster.all(indexed.resource):
                raw = kopf.Body(cast(kopf.RawBody, copy.deepcopy(body)))
                if indexed.only(raw):
                    index.add(await indexed.indexer(raw))
            self[name] = index


# -- time ----------------------------------------------------------------------------------


class Clock:
    """Monotonic and wall time that move only when a test says so."""

    def __init__(self, start: dt.datetime = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)) -> None:
        self.start = start
        self.elapsed = 0.0

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds

    def monotonic(self) -> float:
        return 1000.0 + self.elapsed

    def time(self) -> float:
        return self.now().timestamp()

    def now(self, tz: dt.tzinfo | None = None) -> dt.datetime:
        moment = self.start + dt.timedelta(seconds=self.elapsed)
        return moment.astimezone(tz) if tz is not None else moment.replace(tzinfo=None)

    def install(self, monkeypatch: pytest.MonkeyPatch, module: types.ModuleType) -> None:
        """Let ``module``'s ``time.monotonic``, ``time.time`` and ``dt.datetime.now`` read
        this clock (only that module's: the event loop keeps its own time)."""
        clock = self

        class Datetime(dt.datetime):
            @classmethod
            def now(cls, tz: dt.tzinfo | None = None) -> Datetime:
                return cls.fromtimestamp(clock.time(), tz)

        fake_time = types.SimpleNamespace(monotonic=self.monotonic, time=self.time)
        fake_dt = types.SimpleNamespace(
            datetime=Datetime, UTC=dt.UTC, timedelta=dt.timedelta, timezone=dt.timezone
        )
        monkeypatch.setattr(module, "time", fake_time)
        monkeypatch.setattr(module, "dt", fake_dt)


# -- the queue, as the breaker loop asks it ------------------------------------------------

Key = tuple[str, str]


class FakeQueue:
    """``controllers.handoff.Handoffs``: jobs that wait, and jobs admitted (at once)."""

    def __init__(self) -> None:
        self.queued: list[Key] = []
        self.admitted: list[Key] = []

    async def waiting(self) -> list[Key]:
        return list(self.queued)

    async def admitted_since(self, since: float, wait_seconds: float) -> list[Key]:
        return list(self.admitted)

    async def admitted_after(
        self,
        moment: dt.datetime | None,
        wait_seconds: float = 0.0,
        among: Callable[[Key], bool] | None = None,
    ) -> list[Key]:
        if moment is None:
            return []
        return [k for k in self.admitted if among is None or among(k)]
