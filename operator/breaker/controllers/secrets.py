"""A policy's Secret keys (a webhook's token, Prometheus's token or CA), read where the
policy may read them: its own namespace, or the operator's; a cluster policy only the
operator's. A failure is one sentence an admin can act on, the grant included."""

from __future__ import annotations

import os

from kubernetes import client

from breaker import kube
from breaker.actions.notify import decode_secret, secret_namespace_allowed
from breaker.api.policy import SecretKeyRef


class SecretUnreadable(Exception):
    """The Secret key could not be read; the message says why and what to do."""


async def read_key(
    api: client.ApiClient,
    ref: SecretKeyRef,
    policy_namespace: str | None,
    operator_namespace: str,
    *,
    role: str,
    lines: bool = False,
) -> str:
    """The text at ``ref``; ``lines`` lets it hold several (a PEM bundle). ``role`` names
    the Role the refusal's advice grants (``breaker-webhook``, ``breaker-prometheus``)."""
    namespace = policy_namespace or operator_namespace
    if not secret_namespace_allowed(namespace, operator_namespace, policy_namespace):
        raise SecretUnreadable(f"Secret {ref.name} is outside the namespaces it may be read from")
    try:
        secret = await kube.call(client.CoreV1Api(api).read_namespaced_secret, ref.name, namespace)
    except client.ApiException as error:
        raise SecretUnreadable(
            _refused(error, namespace, ref.name, operator_namespace, role)
        ) from error
    data = {key: str(value) for key, value in (secret.data or {}).items()}
    try:
        return decode_secret(data, ref.key, ref.name, lines=lines)
    except ValueError as error:
        raise SecretUnreadable(str(error)) from error


def _refused(
    error: client.ApiException, namespace: str, name: str, operator_namespace: str, role: str
) -> str:
    if error.status == 403:
        account = os.environ.get("BREAKER_SERVICE_ACCOUNT", "breaker")
        return (
            f"the operator may not read Secret {namespace}/{name}; let it with "
            f"`kubectl -n {namespace} create role {role} --verb=get "
            f"--resource=secrets --resource-name={name}` and `kubectl -n {namespace} "
            f"create rolebinding {role} --role={role} "
            f"--serviceaccount={operator_namespace}:{account}`"
        )
    if error.status == 404:
        return f"Secret {namespace}/{name} not found"
    return kube.api_message(error)
