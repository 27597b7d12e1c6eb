"""Which of several operators acts: kopf peering, with the oldest operator in the lead.

kopf pauses every operator that sees a live peer of higher priority (and all of them on a
tie), and resumes one when the peers above it stop renewing their record for a peering
lifetime. A paused kopf watches nothing, so a standby's loops never wake and never act.

Two rules make that a leader election:
- a new operator takes a priority below every live peer's, so it never preempts the one
  acting, and a random part keeps two that start together from tying;
- an operator that is paused after it has acted (a peer above it appeared, e.g. after a
  network partition) exits: its in-memory indexes stopped with its watches and would be
  stale if it resumed, so it leaves and starts again from a fresh list as a standby.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import signal
from collections.abc import Mapping
from typing import Any

from kubernetes import client

log = logging.getLogger("breaker.leadership")
KOPF_PEERING_LOGGER = "kopf._core.engines.peering"
ACTIVE = {"acted": False}  # set once the operator's loops have done a pass


def live_priorities(status: Mapping[str, Any], now: dt.datetime) -> list[int]:
    """The priorities of the peers in a peering's status whose lifetime has not run out."""
    found = []
    for peer in status.values():
        if not isinstance(peer, Mapping):
            continue
        try:
            seen = dt.datetime.fromisoformat(str(peer["lastseen"]).replace("Z", "+00:00"))
            lifetime = dt.timedelta(seconds=int(peer.get("lifetime", 60)))
            priority = int(peer.get("priority", 0))
        except (KeyError, TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=dt.UTC)
        if seen + lifetime > now:
            found.append(priority)
    return found


def below(priorities: list[int], jitter: int) -> int:
    """A priority under every one given (0 when alone), less a jitter against ties."""
    return min([*priorities, 0]) - 1 - jitter


def priority_below_peers(api: client.ApiClient, peering: str) -> int:
    found: Any
    try:
        found = client.CustomObjectsApi(api).get_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", peering
        )
    except client.ApiException as error:
        if error.status != 404:
            raise
        found = {}
    status = found.get("status") or {}
    return below(live_priorities(status, dt.datetime.now(dt.UTC)), random.randint(0, 999_999))


class _Demoted(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if ACTIVE["acted"] and record.getMessage().startswith("Pausing"):
            log.critical("another operator took the lead; exiting to come back as a standby")
            os.kill(os.getpid(), signal.SIGTERM)


def exit_when_demoted() -> None:
    """Leave (SIGTERM, so kopf shuts down cleanly) if kopf pauses us after we acted."""
    logging.getLogger(KOPF_PEERING_LOGGER).addHandler(_Demoted())
