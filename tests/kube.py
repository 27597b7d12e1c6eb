"""Typed access to what the Kubernetes client takes and returns, for the tests.

The client's generated models make every field optional, its CustomObjectsApi returns
``object``, and its methods annotate a request body as the model class although they
serialise a plain dict just the same. These helpers say so once, instead of at every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, cast

from kubernetes import client

S = TypeVar("S", covariant=True)


class _WithMetadata(Protocol):
    @property
    def metadata(self) -> client.V1ObjectMeta | None: ...


class _WithSpec(Protocol[S]):
    @property
    def spec(self) -> S | None: ...


class _WithStatus(Protocol[S]):
    @property
    def status(self) -> S | None: ...


def meta_of(obj: _WithMetadata) -> client.V1ObjectMeta:
    """Its metadata: an object the API server returns always has some."""
    assert obj.metadata is not None, obj
    return obj.metadata


def spec_of(obj: _WithSpec[S]) -> S:
    """Its spec: an object the API server returns has one where its kind does."""
    assert obj.spec is not None, obj
    return obj.spec


def status_of(obj: _WithStatus[S]) -> S:
    """Its status: the API server fills it in on every object of a kind that has one."""
    assert obj.status is not None, obj
    return obj.status


def as_body(manifest: Mapping[str, Any]) -> Any:
    """A manifest as a request body: the client serialises a dict as it does its model class,
    although its annotations name only the model."""
    return manifest


def as_dict(found: object) -> dict[str, Any]:
    """What the CustomObjectsApi returns (annotated ``object``): a JSON object."""
    assert isinstance(found, dict), found
    return cast("dict[str, Any]", found)


def name_of(obj: _WithMetadata) -> str:
    """Its name: an object the API server returns always has one."""
    name = meta_of(obj).name
    assert name is not None, obj
    return name
