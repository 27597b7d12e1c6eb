"""The admission policy's params kept in step with what the breakers hold (see
``actions/admission.py`` for what they hold and why).

One BreakerHold per namespace where a breaker holds containment, written when what it
should hold changes and deleted when nothing is held there any more. The operator does not
watch them: it lists its own at its first pass and at every resync, and otherwise trusts
what it wrote. Nobody else may write them (no role but the operator's grants it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pydantic
from kubernetes import client

from breaker import kube
from breaker.actions import admission
from breaker.api.hold import BreakerHoldSpec
from breaker.constants import ADMISSION_PARAMS, BREAKERHOLDS, GROUP, VERSION

log = logging.getLogger("breaker.admission")
JSON_PATCH = "application/json-patch+json"


class AdmissionParams:
    def __init__(self, api: client.ApiClient, resync: float, serves: Callable[[str], bool]) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.resync = resync
        self.serves = serves  # this operator's namespaces (a shard keeps to its own)
        # None: not listed yet. A BreakerHold whose spec does not read is kept as None.
        self.written: dict[str, BreakerHoldSpec | None] | None = None
        self.listed_at = 0.0
        self.absent_until = 0.0  # the CRD was missing: not asked again before then
        self.lock = asyncio.Lock()

    async def sync(self, wanted: Callable[[], Mapping[str, BreakerHoldSpec]]) -> bool:
        """Write and delete what differs from what ``wanted()`` gives; True if a call
        failed. One at a time, ``wanted`` worked out once the others are done: a reset
        lets go of its breaker while the loop's pass may be writing."""
        async with self.lock:
            return await self._sync(wanted())

    async def _sync(self, wanted: Mapping[str, BreakerHoldSpec]) -> bool:
        if time.monotonic() < self.absent_until:
            return False
        try:
            written = await self._written()
        except client.ApiException as error:
            if error.status == 404:
                # Not served: the CRD is missing (an upgrade that skipped `crds/`). The
                # chart's policy refuses to render without it, and nothing is lost by not
                # retrying before the resync.
                self.absent_until = time.monotonic() + self.resync
                log.warning("BreakerHolds are not served (%s): the admission policy's params "
                            "are not kept; apply the CRDs (kubectl apply --server-side -f "
                            "crds/)", kube.api_problem(error))  # fmt: skip
                return False
            log.warning("BreakerHolds not listed: %s", kube.api_problem(error))
            return True
        write, delete = admission.changes(wanted, written)
        failed = False
        for namespace, spec in write.items():
            try:
                await self._put(namespace, spec, exists=namespace in written)
                written[namespace] = spec
            except client.ApiException as error:
                if not kube.namespace_terminating(error):
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
                    continue
            written.pop(namespace, None)
        return failed

    async def _written(self) -> dict[str, BreakerHoldSpec | None]:
        """What the BreakerHolds hold: as last listed, with this operator's writes since."""
        now = time.monotonic()
        if self.written is None or now - self.listed_at >= self.resync:
            listed: Any = await kube.call(
                self.objects.list_cluster_custom_object, GROUP, VERSION, BREAKERHOLDS
            )
            self.written = {}
            for item in listed.get("items") or []:
                meta = item.get("metadata") or {}
                namespace = str(meta.get("namespace") or "")
                if meta.get("name") != ADMISSION_PARAMS or not self.serves(namespace):
                    continue
                try:
                    self.written[namespace] = BreakerHoldSpec.model_validate(item.get("spec"))
                except pydantic.ValidationError:
                    self.written[namespace] = None  # written again, or deleted
            self.listed_at = now
        return self.written

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
