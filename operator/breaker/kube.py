"""The operator's Kubernetes client: one ApiClient, blocking calls run off the event loop.

kopf watches and indexes; this client only writes (creates, patches) and reads what no
index holds. Every call goes through ``call`` so the loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config

T = TypeVar("T")

GROUP = "breaker.dev"
VERSION = "v1alpha1"


def api_client() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(functools.partial(function, *args, **kwargs))


def to_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return result


def is_status(error: Exception, *codes: int) -> bool:
    return isinstance(error, client.ApiException) and error.status in codes


def namespace_terminating(error: BaseException | None) -> bool:
    """The API refused a write because the namespace is being deleted: nothing to fix."""
    return (
        isinstance(error, client.ApiException)
        and error.status == 403
        and "NamespaceTerminating" in str(error.body or "")
    )


MERGE_PATCH = "application/merge-patch+json"


async def merge_patch(function: Callable[..., T], *args: Any) -> T:
    """A JSON merge patch (RFC 7386): a None value deletes the key.

    The generated client would otherwise send a dict as a JSON patch to the built-in APIs.
    """
    return await call(function, *args, _content_type=MERGE_PATCH)


def api_message(error: client.ApiException) -> str:
    """What the API server said, from the Status body of a failed call."""
    try:
        message = json.loads(error.body or "{}").get("message", "")
    except ValueError:
        message = ""
    return str(message or error.body or "")[:1000]


def pruned(value: Any) -> Any:
    """A spec as the API server stores it: empty lists, maps and nulls dropped."""
    if isinstance(value, dict):
        kept = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value
