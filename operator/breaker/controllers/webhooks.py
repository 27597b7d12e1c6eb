"""The optional webhook of a transition: its Secret read where the policy may read it, the
payload built from the status as recorded, and the delivery in the background (containment
never waits for it); a failure says itself as a Warning Event on the Breaker."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from breaker import events, kube, metrics
from breaker.actions.notify import (
    Notifier,
    Result,
    decode_secret,
    payload,
    secret_namespace_allowed,
)
from breaker.actions.settings import ActionSettings
from breaker.api.policy import NotifyAction, SecretKeyRef


class Webhooks:
    def __init__(self, api: client.ApiClient, operator_namespace: str) -> None:
        self.api = api
        self.operator_namespace = operator_namespace
        self.sender = Notifier()

    async def close(self) -> None:
        await self.sender.close()

    async def send(
        self,
        actions: ActionSettings,
        body: dict[str, Any],
        reason: str,
        written: Mapping[str, Any],
    ) -> None:
        """Post the optional webhook in the background: containment never waits for it.
        ``written`` is the status as the outcome was recorded, so the body holds results."""
        for settings in actions.notify:
            token = None
            if settings.secret_ref is not None:
                try:
                    token = await self._token(body, settings.secret_ref)
                except (ValueError, client.ApiException) as error:
                    message = f"webhook not sent: {self._secret_problem(body, settings, error)}"
                    await events.post(self.api, body, "Warning", "WebhookFailed", message)
                    continue
            snapshot = {**body, "status": written}
            document = payload(reason, snapshot, dt.datetime.now(dt.UTC))

            async def delivered(result: Result, breaker: dict[str, Any] = body) -> None:
                outcome = "ok" if result.ok else "error"
                metrics.ACTIONS.labels("notify", "webhook", outcome).inc()
                if not result.ok:
                    why = f"after {result.attempts} attempts: {result.error or result.status}"
                    await events.post(self.api, breaker, "Warning", "WebhookFailed", why)

            self.sender.submit(settings.url, document, token, delivered)

    def _secret_problem(
        self, body: Mapping[str, Any], settings: NotifyAction, error: Exception
    ) -> str:
        """What went wrong reading the webhook's Secret, and for a refusal, the grant."""
        if not isinstance(error, client.ApiException) or settings.secret_ref is None:
            return str(error)
        name = settings.secret_ref.name
        namespace = body["spec"]["policyRef"].get("namespace") or self.operator_namespace
        if error.status == 403:
            account = os.environ.get("BREAKER_SERVICE_ACCOUNT", "breaker")
            return (
                f"the operator may not read Secret {namespace}/{name}; let it with "
                f"`kubectl -n {namespace} create role breaker-webhook --verb=get "
                f"--resource=secrets --resource-name={name}` and `kubectl -n {namespace} "
                "create rolebinding breaker-webhook --role=breaker-webhook "
                f"--serviceaccount={self.operator_namespace}:{account}`"
            )
        if error.status == 404:
            return f"Secret {namespace}/{name} not found"
        return kube.api_message(error)

    async def _token(self, body: dict[str, Any], ref: SecretKeyRef) -> str:
        """The Secret is read from the policy's namespace, or (cluster policies) the operator's."""
        policy_namespace = body["spec"]["policyRef"].get("namespace")
        namespace = policy_namespace or self.operator_namespace
        if not secret_namespace_allowed(namespace, self.operator_namespace, policy_namespace):
            raise ValueError(f"Secret {ref.name} is outside the namespaces it may be read from")
        secret = await kube.call(
            client.CoreV1Api(self.api).read_namespaced_secret, ref.name, namespace
        )
        data = {key: str(value) for key, value in (secret.data or {}).items()}
        return decode_secret(data, ref.key, ref.name)
