"""The optional webhook of a transition: its Secret read where the policy may read it, the
payload built from the status as recorded, and the delivery in the background (containment
never waits for it); a failure says itself as a Warning Event on the Breaker."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from breaker import events, metrics
from breaker.actions.notify import Notifier, Result, payload
from breaker.actions.settings import ActionSettings
from breaker.controllers.secrets import SecretUnreadable, read_key


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
                    token = await read_key(
                        self.api,
                        settings.secret_ref,
                        body["spec"]["policyRef"].get("namespace"),
                        self.operator_namespace,
                        role="breaker-webhook",
                    )
                except SecretUnreadable as error:
                    message = f"webhook not sent: {error}"
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
