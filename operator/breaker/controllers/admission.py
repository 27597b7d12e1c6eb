"""The admission policy's params kept in step with what the breakers hold (see
``actions/admission.py`` for what they hold and why).

One BreakerHold per namespace where a breaker holds containment, written when what it
should hold changes and deleted when nothing is held there any more. The operator watches
them (``inventory.breaker_holds``): a BreakerHold someone deleted or edited is put back at
the pass its event wakes, and nothing is listed again at rest. A pass that comes before
the watch shows the operator's own last write may send it again: every write is the whole
spec (a create that finds it there replaces it; a delete that finds it gone is done), so a
second one changes nothing. Nobody else may write them (no role but the operator's grants
it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping

from kubernetes import client

from breaker import kube
from breaker.actions import admission
from breaker.api.hold import BreakerHoldSpec
from breaker.constants import ADMISSION_PARAMS, BREAKERHOLDS, GROUP, VERSION

log = logging.getLogger("breaker.admission")
JSON_PATCH = "application/json-patch+json"


# A BreakerHold kind not served (its CRD missing) is not asked for again before this.
ABSENT_SECONDS = 300.0
Held = Mapping[str, BreakerHoldSpec | None]  # namespace -> spec, None if it does not read


class AdmissionParams:
    def __init__(
        self,
        api: client.ApiClient,
        held: Callable[[], Held],
        serves: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.held = held  # what the watch last showed, every namespace's
        self.serves = serves  # this operator's namespaces (a shard keeps to its own)
        self.clock = clock
        self.absent_until = 0.0  # the CRD was missing: not written again before then
        self.lock = asyncio.Lock()

    async def sync(self, wanted: Callable[[], Mapping[str, BreakerHoldSpec]]) -> bool:
        """Write and delete what differs from what ``wanted()`` gives; True if a call
        failed. One at a time, ``wanted`` worked out once the others are done: a reset
        lets go of its breaker while the loop's pass may be writing."""
        async with self.lock:
            return await self._sync(wanted())

    async def _sync(self, wanted: Mapping[str, BreakerHoldSpec]) -> bool:
        if self.clock() < self.absent_until:
            return False
        written = {ns: spec for ns, spec in self.held().items() if self.serves(ns)}
        write, delete = admission.changes(wanted, written)
        failed = False
        for namespace, spec in write.items():
            try:
                await self._put(namespace, spec, exists=namespace in written)
            except client.ApiException as error:
                if _not_served(error):
                    # An upgrade that skipped `crds/`. The chart's policy refuses to render
                    # without it, and nothing is lost by not retrying for a while.
                    self.absent_until = self.clock() + ABSENT_SECONDS
                    log.warning("BreakerHolds are not served (%s): the admission policy's "
                                "params are not kept; apply the CRDs (kubectl apply "
                                "--server-side -f crds/)", kube.api_problem(error))  # fmt: skip
                    return False
                if not kube.namespace_terminating(error) and not _namespace_gone(error):
                    log.warning("BreakerHold %s/%s not written: %s",
                                namespace, ADMISSION_PARAMS, kube.api_problem(error))  # fmt: skip
                    failed = True
        for namespace in delete:
            try:
                await kube.call(
                    self.objects.delete_namespaced_custom_object,
                    GROUP, VERSION, namespace, BREAKERHOLDS, ADMISSION_PARAMS,
                )  # fmt: skip
            except client.ApiException as error:
                if error.status != 404:
                    log.warning("BreakerHold %s/%s not deleted: %s",
                                namespace, ADMISSION_PARAMS, kube.api_problem(error))  # fmt: skip
                    failed = True
        return failed

    async def _put(self, namespace: str, spec: BreakerHoldSpec, exists: bool) -> None:
        if exists and await self._replace_spec(namespace, spec):
            return
        try:
            await kube.call(
                self.objects.create_namespaced_custom_object,
                GROUP, VERSION, namespace, BREAKERHOLDS, admission.hold(namespace, spec),
            )  # fmt: skip
        except client.ApiException as error:
            if error.status != 409 or not await self._replace_spec(namespace, spec):
                raise

    async def _replace_spec(self, namespace: str, spec: BreakerHoldSpec) -> bool:
        """The whole spec replaced (a JSON patch: a custom resource has no unconditional
        update, and a merge patch would keep the pods no longer quarantined); False if the
        BreakerHold is not there."""
        body = spec.wire()
        try:
            await kube.call(
                self.objects.patch_namespaced_custom_object,
                GROUP, VERSION, namespace, BREAKERHOLDS, ADMISSION_PARAMS,
                [{"op": "replace", "path": "/spec", "value": body}],
                _content_type=JSON_PATCH,
            )  # fmt: skip
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True


def _missing(error: client.ApiException) -> str | None:
    """What a 404 says is missing: the kind it names (``namespaces`` when the namespace is
    gone), "" when it names nothing (BreakerHolds are not served), None if not a 404."""
    if error.status != 404:
        return None
    try:
        details = json.loads(error.body or "{}").get("details") or {}
    except (ValueError, AttributeError):
        return ""  # "404 page not found": no such kind at this group version
    return str(details.get("kind") or "") if details.get("name") else ""


def _namespace_gone(error: client.ApiException) -> bool:
    """A create refused because the namespace itself is gone: nothing left to hold."""
    return _missing(error) == "namespaces"


def _not_served(error: client.ApiException) -> bool:
    return _missing(error) == ""
