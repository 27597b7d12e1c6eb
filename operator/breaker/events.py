"""Kubernetes Events posted from the operator's own loops (kopf's helpers need a handler).

Events mark transitions only, never ticks; reasons are CamelCase.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any, Literal

from kubernetes import client

from breaker import kube

log = logging.getLogger("breaker.events")
COMPONENT = "breaker"


async def post(
    api: client.ApiClient,
    obj: dict[str, Any],
    type_: Literal["Normal", "Warning"],
    reason: str,
    message: str,
) -> None:
    meta = obj["metadata"]
    namespace = meta.get("namespace") or "default"
    now = dt.datetime.now(dt.UTC)
    event = {
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": 1,
    }
    try:
        await kube.call(client.CoreV1Api(api).create_namespaced_event, namespace, event)
    except client.ApiException as error:
        if kube.namespace_terminating(error):
            return
        # An Event is a courtesy: losing one must never stop the reconcile.
        log.warning(
            "could not post event %s on %s: %s", reason, meta["name"], kube.api_message(error)
        )
