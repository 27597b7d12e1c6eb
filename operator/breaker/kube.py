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

from breaker import metrics
from breaker.constants import GROUP, VERSION

T = TypeVar("T")


def api_client() -> client.ApiClient:
    """In a pod: its ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


THROTTLE_ATTEMPTS = 4
THROTTLE_WAIT_CAP_SECONDS = 5.0


async def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """One API call off the event loop. A 429 (the API server's priority and fairness, or
    a proxy, shedding load) is retried after the Retry-After it gives, a few times, as
    client-go does; every other error is the caller's."""
    for attempt in range(THROTTLE_ATTEMPTS):
        try:
            return await asyncio.to_thread(functools.partial(function, *args, **kwargs))
        except client.ApiException as error:
            if error.status == 409:
                metrics.API_ERRORS.labels("409").inc()
            if error.status != 429 or attempt == THROTTLE_ATTEMPTS - 1:
                raise
            metrics.API_ERRORS.labels("429").inc()
            await asyncio.sleep(retry_after(error, attempt))
    raise AssertionError("unreachable")


async def patch_breaker(
    api: client.ApiClient, key: tuple[str, str], patch: dict[str, Any], *, status: bool = False
) -> Any:
    """A merge patch of the Breaker ``key`` (namespace, name), or of its status."""
    objects = client.CustomObjectsApi(api)
    method = (
        objects.patch_namespaced_custom_object_status
        if status
        else objects.patch_namespaced_custom_object
    )
    return await call(method, GROUP, VERSION, key[0], "breakers", key[1], patch)


def retry_after(error: client.ApiException, attempt: int) -> float:
    """Seconds to wait before retrying a 429: its Retry-After, else 1, 2, 4 s; capped."""
    headers = error.headers or {}
    try:
        wanted = float(headers.get("Retry-After", ""))
    except ValueError:
        wanted = float(2**attempt)
    return max(0.1, min(wanted, THROTTLE_WAIT_CAP_SECONDS))


def to_dict(api: client.ApiClient, obj: Any) -> dict[str, Any]:
    result: dict[str, Any] = api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return result


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


def api_problem(error: client.ApiException, limit: int = 300) -> str:
    """One line for a log, an Event or a record: the status, the reason, what it said."""
    return f"{error.status} {error.reason}: {api_message(error)}"[:limit]


def pruned(value: Any) -> Any:
    """A spec as the API server stores it: empty lists, maps and nulls dropped."""
    if isinstance(value, dict):
        kept = {k: pruned(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value
