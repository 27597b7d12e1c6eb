"""`kubectl breaker`: the admin's plugin (kubectl finds the `kubectl-breaker` script).

``egress POD`` answers "what can this pod still reach?" across every NetworkPolicy of its
namespace, with the same function the operator and its tests use. The other commands
(status, explain, reset, trip) come with the plugin's own issue.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client, config

from breaker.actions.egress import Destination, EffectiveEgress, effective_egress


def _load() -> tuple[client.ApiClient, str]:
    try:
        config.load_kube_config()  # type: ignore[no-untyped-call]
        _, context = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        namespace = (context or {}).get("context", {}).get("namespace") or "default"
    except config.ConfigException as error:
        raise SystemExit(
            f"kubectl breaker: no usable kubeconfig ({error}); set KUBECONFIG"
        ) from None
    return client.ApiClient(), namespace


def _destination(text: str) -> Destination:
    address, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(address)
        return Destination(port=int(port), ip=address)
    except ValueError:
        raise SystemExit(
            f"kubectl breaker: --to {text!r}: give IP:PORT, e.g. 203.0.113.7:3333"
        ) from None


def describe(name: str, egress: EffectiveEgress, policies: Sequence[Mapping[str, Any]]) -> str:
    if not egress.isolated:
        return (
            f"pod {name}: no NetworkPolicy selects it for egress, so it may reach anything "
            "(the policies of its namespace add nothing for it)"
        )
    lines = [f"pod {name}: egress isolated by {', '.join(egress.selecting)}"]
    if not egress.allowances:
        lines.append("  allowed: nothing (every connection out is denied)")
    for allowance in egress.allowances:
        lines.append(f"  allowed by {allowance.policy}: {json.dumps(dict(allowance.rule))}")
    if egress.open_to_everything:
        lines.append("  WARNING: a rule allows every destination on every port")
    return "\n".join(lines)


def _egress(args: argparse.Namespace) -> int:
    api, default_namespace = _load()
    namespace = args.namespace or default_namespace
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    try:
        pod = core.read_namespaced_pod(args.pod, namespace)
        listed = net.list_namespaced_network_policy(namespace)
    except client.ApiException as error:
        if error.status == 404:
            print(f"kubectl breaker: pod {namespace}/{args.pod} not found", file=sys.stderr)
        elif error.status == 403:
            print(
                f"kubectl breaker: not allowed to read pods or NetworkPolicies in {namespace}: "
                "ask for the breaker-viewer role",
                file=sys.stderr,
            )
        else:
            print(f"kubectl breaker: {error.status} {error.reason}", file=sys.stderr)
        return 1
    policies = api.sanitize_for_serialization(listed)["items"]  # type: ignore[no-untyped-call]
    labels = (pod.metadata.labels if pod.metadata else None) or {}
    egress = effective_egress(labels, policies)
    print(describe(f"{namespace}/{args.pod}", egress, policies))
    for target in args.to or []:
        destination = _destination(target)
        verdict = "ALLOWED" if egress.allows(destination, namespace) else "denied"
        print(f"  {target}: {verdict}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="kubectl breaker",
        description="Inspect and operate circuit breakers around GPU training jobs.",
    )
    parser.add_argument(
        "--version", action="version", version=f"kubectl-breaker {version('breaker')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    egress = commands.add_parser(
        "egress", help="what a pod can reach, across every NetworkPolicy of its namespace"
    )
    egress.add_argument("pod", help="the pod's name")
    egress.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    egress.add_argument(
        "--to", action="append", metavar="IP:PORT", help="check one destination (repeatable)"
    )
    egress.set_defaults(handler=_egress)
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code
