"""The admission policy's params kept in step with what the breakers hold (see
``actions/admission.py`` for what they hold and why).

One ConfigMap per namespace where a breaker holds containment, written when what it should
hold changes and deleted when nothing is held there any more. The operator does not watch
ConfigMaps (a cluster's ConfigMaps are many and some are large): it lists its own, by
label, at its first pass and at every resync, and otherwise trusts what it wrote. Nobody
else may change them: the policy refuses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from kubernetes import client

from breaker import kube
from breaker.actions import admission
from breaker.constants import ADMISSION_PARAMS

log = logging.getLogger("breaker.admission")
SELECTOR = ",".join(f"{key}={value}" for key, value in admission.MANAGED.items())


class AdmissionParams:
    def __init__(self, api: client.ApiClient, resync: float, serves: Callable[[str], bool]) -> None:
        self.core = client.CoreV1Api(api)
        self.resync = resync
        self.serves = serves  # this operator's namespaces (a shard keeps to its own)
        self.written: dict[str, Mapping[str, str]] | None = None  # None: not listed yet
        self.listed_at = 0.0

    async def sync(self, wanted: Mapping[str, Mapping[str, str]]) -> bool:
        """Write and delete what differs from ``wanted``; True if a call failed."""
        try:
            written = await self._written()
        except client.ApiException as error:
            log.warning("admission params not listed: %s", kube.api_problem(error))
            return True
        write, delete = admission.changes(wanted, written)
        failed = False
        for namespace, data in write.items():
            try:
                await self._put(namespace, data, exists=namespace in written)
                written[namespace] = data
            except client.ApiException as error:
                if not kube.namespace_terminating(error):
                    log.warning("%s/%s not written: %s", namespace, ADMISSION_PARAMS, error.reason)
                    failed = True
        for namespace in delete:
            try:
                await kube.call(self.core.delete_namespaced_config_map, ADMISSION_PARAMS, namespace)
            except client.ApiException as error:
                if error.status != 404:
                    log.warning("%s/%s not deleted: %s", namespace, ADMISSION_PARAMS, error.reason)
                    failed = True
                    continue
            del written[namespace]
        return failed

    async def _written(self) -> dict[str, Mapping[str, str]]:
        """What the ConfigMaps hold: as last listed, with this operator's writes since."""
        now = time.monotonic()
        if self.written is None or now - self.listed_at >= self.resync:
            listed = await kube.call(
                self.core.list_config_map_for_all_namespaces, label_selector=SELECTOR
            )
            self.written = {}
            for item in listed.items:
                meta = item.metadata
                namespace = str(meta.namespace) if meta is not None else ""
                if meta is not None and meta.name == ADMISSION_PARAMS and self.serves(namespace):
                    self.written[namespace] = dict(item.data or {})
            self.listed_at = now
        return self.written

    async def _put(self, namespace: str, data: Mapping[str, str], exists: bool) -> None:
        body = admission.configmap(namespace, data)
        if exists:
            try:
                await kube.call(
                    self.core.replace_namespaced_config_map, ADMISSION_PARAMS, namespace, body
                )
                return
            except client.ApiException as error:
                if error.status != 404:
                    raise
        try:
            await kube.call(self.core.create_namespaced_config_map, namespace, body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            await kube.call(
                self.core.replace_namespaced_config_map, ADMISSION_PARAMS, namespace, body
            )
