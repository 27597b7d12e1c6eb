"""Run the operator: load the controllers into kopf's registry and start kopf.

Everything the operator writes of its own (finalizer, progress and diff-base annotations)
lives under breaker.dev/.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

# Importing the controllers registers their handlers and indexes.
from breaker.controllers import policies, trainingjobs

CONTROLLERS = (policies, trainingjobs)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "breaker.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="breaker.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="breaker.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30


def run(liveness: str | None, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    kopf.run(clusterwide=True, standalone=True, liveness_endpoint=liveness)
