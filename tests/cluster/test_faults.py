"""Faults outside the operator: Prometheus down, slow or talking nonsense, the API server
restarted, the webhook's receiver gone. Each time: no false trip, no crash, a condition or
Event that says what is wrong, and recovery by itself once the fault ends.

Prometheus's faults are made by a proxy in front of the session's real Prometheus (whose
own stop would stop every other test's too); the API server is the real one, restarted.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client, config

from breaker.constants import GROUP, VERSION
from tests.cluster.scenes import ALLOW_ALL, Cluster, policy, trainingjob
from tests.conftest import (
    FORGIVEN_END,
    FORGIVEN_START,
    RELEASE_NAMESPACE,
    SERVICE_ACCOUNT,
    Operator,
    free_port,
)
from tests.helpers import wait_for
from tests.kube import as_body, spec_of

# (fault, what the breaker said): printed after the run.
FAULTS: list[tuple[str, str]] = []


class FaultyPrometheus:
    """Forwards to the real Prometheus, or fails as ``mode`` says: ``down`` (the connection
    is dropped), ``slow`` (no answer for 10 s, beyond the query timeout), ``garbage``
    (HTTP 200 that is not Prometheus's JSON), ``wrong-shape`` (JSON, but not a vector)."""

    def __init__(self, upstream: str) -> None:
        self.mode = "ok"
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                mode = proxy.mode
                if mode == "down":
                    self.close_connection = True
                    self.connection.close()
                    return
                if mode == "slow":
                    time.sleep(10)
                if mode == "garbage":
                    self._send(b"<html>502 bad gateway, from a proxy</html>")
                    return
                if mode == "wrong-shape":
                    self._send(b'{"status":"success","data":{"resultType":"vector","result":7}}')
                    return
                length = int(self.headers.get("Content-Length", "0"))
                request = urllib.request.Request(
                    upstream + self.path,
                    data=self.rfile.read(length) if length else None,
                    headers={"Content-Type": self.headers.get("Content-Type", "")},
                    method=self.command,
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    self._send(response.read())

            def _send(self, body: bytes) -> None:
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the operator gave up waiting: that is the point of "slow"

            do_GET = do_POST = _answer

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signals(c: Cluster, name: str = "rl-guard") -> tuple[str | None, str | None, str]:
    status = c.breaker(name).get("status") or {}
    conditions = status.get("conditions") or []
    found: dict[str, Any] = next((x for x in conditions if x["type"] == "SignalsAvailable"), {})
    return status.get("signals"), found.get("reason"), found.get("message", "")


def signals_with_reason(c: Cluster, reason: str) -> tuple[str | None, str | None, str] | None:
    """What ``signals`` says, once its reason is ``reason``."""
    said = signals(c)
    return said if said[1] == reason else None


def test_prometheus_down_slow_or_garbled_holds_says_why_and_recovers(cluster: Cluster) -> None:
    c = cluster
    proxy = FaultyPrometheus(c.local.prometheus_url)
    try:
        c.create("trainingjobs", trainingjob("rl", 1, 8))
        pods = c.running("rl", 1)
        # The other tenant's job, guarded through the real Prometheus: never held up.
        c.create("trainingjobs", trainingjob("steady", 1, 8), c.other)
        c.running("steady", 1, c.other)
        c.create("breakerpolicies", policy(url=proxy.url))
        c.create("breakerpolicies", policy(), c.other)
        with c.sim(pods, [{"at": "0s", "do": "train-mixed"}]):
            wait_for(lambda: signals(c)[0] == "Available", "signals read through the proxy")
            for mode, reason in (
                ("down", "PrometheusUnreachable"),
                ("slow", "PrometheusTimeout"),
                ("garbage", "PrometheusBadResponse"),
                ("wrong-shape", "PrometheusBadResponse"),
            ):
                proxy.mode = mode
                seen = wait_for(
                    functools.partial(signals_with_reason, c, reason),
                    f"the breaker to say {reason} while Prometheus is {mode}",
                    timeout=60,
                )
                assert seen[0] == "Unknown"
                assert "state is held" in seen[2]
                FAULTS.append((f"Prometheus {mode}", f"{reason}: {seen[2][:90]}"))
                other = c.get("breakerpolicies", "guard", c.other).get("status", {})
                assert other.get("unknown", 0) == 0, "the healthy policy was held up"
                proxy.mode = "ok"
                wait_for(lambda: signals(c)[0] == "Available", f"recovery after {mode}", 60)
    finally:
        proxy.stop()
    status = c.breaker("rl-guard")["status"]
    assert status["state"] == "Closed"
    assert not status.get("actions")
    assert c.state("rl") == "Running"
    tripped = [e for e in c.core.list_namespaced_event(c.ns).items if e.reason == "BreakerTripped"]
    assert not tripped


def test_the_kill_switch_never_waits_on_a_hung_prometheus(cluster: Cluster) -> None:
    """The session's Prometheus stopped (SIGSTOP): every query hangs, for the policy's
    timeout (five minutes here). An admin's ForcedOpen is contained, and then a reset undone,
    while it is still stopped and before any query could have timed out: the breaker still
    says its signals are Available, which a timed-out evaluation would have made Unknown."""
    c = cluster
    c.create("trainingjobs", trainingjob("rl", 1, 8))
    pods = c.running("rl", 1)
    c.net.create_namespaced_network_policy(c.ns, as_body(ALLOW_ALL))
    body = policy()
    body["spec"]["prometheus"]["timeout"] = "300s"  # far beyond what the test can take
    c.create("breakerpolicies", body)
    before = c.specs()
    with c.sim(pods, [{"at": "0s", "do": "train-mixed"}]):
        wait_for(
            lambda: signals(c)[0] == "Available" and c.settled_state("rl-guard") == "Closed",
            "the breaker evaluating",
        )
        prometheus = c.local.process("prometheus").pid()
        assert prometheus is not None
        os.kill(prometheus, signal.SIGSTOP)
        try:
            # Evaluations are every second: wait until one has hung on the stopped server.
            wait_for(lambda: _hung_queries(prometheus), "a query hung on Prometheus", 10)
            c.patch(
                "breakers",
                "rl-guard",
                {"spec": {"override": "ForcedOpen", "overrideReason": "kill switch"}},
            )
            wait_for(
                lambda: c.settled_state("rl-guard") == "ForcedOpen",
                "the ForcedOpen contained",
                timeout=45,
            )
            assert _stopped(prometheus)
            assert signals(c)[0] == "Available", "contained only after a query timed out"
            assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True
            assert "rl-guard-quarantine" in {p["metadata"]["name"] for p in c.netpols()}

            c.patch("breakers", "rl-guard", {"spec": {"override": None, "reset": "kill-1"}})
            wait_for(
                lambda: c.settled_state("rl-guard") == "Closed" and c.specs() == before,
                "the reset undone",
                timeout=45,
            )
            assert _stopped(prometheus)
            assert signals(c)[0] == "Available", "undone only after a query timed out"
            FAULTS.append(
                ("Prometheus hung (SIGSTOP), ForcedOpen and reset", "both done while it hung")
            )
        finally:
            os.kill(prometheus, signal.SIGCONT)
    wait_for(lambda: signals(c)[0] == "Available", "evaluating again", timeout=90)


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): its state in /proc is T."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def _hung_queries(pid: int) -> bool:
    """A connection to the stopped Prometheus waits with a request unread (its receive
    queue not empty), sent by a client that is not Thanos's sidecar (which asks the same
    Prometheus): an evaluation is hung on it."""
    listening = {
        line.split()[3]
        for line in subprocess.run(
            ["ss", "-Hltnp"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
        if f"pid={pid}," in line
    }
    established = subprocess.run(
        ["ss", "-Htnp", "state", "established"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # Each client's own end: its address, and the process that holds it.
    clients = {line.split()[2]: line for line in established if line.split()[3] in listening}
    return any(
        int(fields[0]) > 0
        and fields[2] in listening
        and '"thanos"' not in clients.get(fields[3], '"thanos"')
        for fields in (line.split() for line in established)
    )


def test_the_api_server_restarted_mid_run_is_ridden_out(
    cluster: Cluster, operator_process: Operator
) -> None:
    c = cluster
    c.create("trainingjobs", trainingjob("rl", 1, 8))
    pods = c.running("rl", 1)
    c.create("breakerpolicies", policy())
    with c.sim(pods, [{"at": "0s", "do": "train-mixed"}]):
        wait_for(lambda: signals(c)[0] == "Available", "the breaker evaluating")
        # A restarted API server refuses requests for a moment while its RBAC cache fills:
        # the operator's log says so, and the session's check of that log skips this window.
        operator_process.note(FORGIVEN_START)
        c.local.restart_apiserver(down_seconds=3)
        FAULTS.append(("API server stopped 3 s and restarted", "operator kept running"))
        operator_process.wait_evaluations(3, f"{c.ns}/guard")  # with the client reconnecting
        assert not operator_process.dead(), "the operator died with the API server"
        assert c.breaker("rl-guard")["status"]["state"] == "Closed"
    # The API server's RBAC cache has filled once the operator's own identity is let in
    # again; from then on its log must show no refusal.
    identity: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        str(operator_process.kubeconfig)
    )
    as_operator = client.CustomObjectsApi(identity)
    wait_for(
        lambda: as_operator.list_namespaced_custom_object(GROUP, VERSION, c.ns, "breakers"),
        "the API server to let the operator in again",
        timeout=60,
        ignore=(client.ApiException,),
    )
    operator_process.note(FORGIVEN_END)
    # Its watches came back: a change made now is acted on.
    c.patch("breakers", "rl-guard", {"spec": {"override": "ForcedOpen"}})
    wait_for(
        lambda: c.settled_state("rl-guard") == "ForcedOpen",
        "a trip after the restart",
        timeout=90,
    )
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True


def test_a_webhook_receiver_that_is_down_is_reported_and_never_delays_containment(
    cluster: Cluster,
) -> None:
    c = cluster
    c.create("trainingjobs", trainingjob("rl", 1, 8))
    c.running("rl", 1)
    body = policy()
    body["spec"]["actions"] = [
        {"type": "revokeEgress"},
        {"type": "pause"},
        {"type": "notify", "notify": {"url": f"http://127.0.0.1:{free_port()}/hook"}},
    ]
    c.create("breakerpolicies", body)
    wait_for(lambda: c.breaker("rl-guard").get("status"), "the breaker")
    c.patch("breakers", "rl-guard", {"spec": {"override": "ForcedOpen"}})
    wait_for(
        lambda: c.settled_state("rl-guard") == "ForcedOpen",
        "contained while the receiver is down",
    )
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True
    failed = wait_for(
        lambda: [
            e
            for e in c.core.list_namespaced_event(
                c.ns, field_selector="involvedObject.name=rl-guard,reason=WebhookFailed"
            ).items
            if e.type == "Warning"
        ],
        "a WebhookFailed Warning",
        timeout=120,
    )
    FAULTS.append(("webhook receiver down", f"WebhookFailed: {(failed[0].message or '')[:90]}"))
    assert "attempts" in (failed[0].message or "")


def api_errors(operator: Operator, code: str) -> float:
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    prefix = f'breaker_api_errors_total{{code="{code}"}} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_throttled_by_the_api_server_it_retries_and_contains_once_let_through(
    cluster: Cluster, operator_process: Operator, api_client: Any
) -> None:
    """The real API server's priority and fairness rejects every request of the operator's
    ServiceAccount (429) for a while, as an overloaded control plane would."""
    c = cluster
    c.create("trainingjobs", trainingjob("rl", 1, 8))
    c.running("rl", 1)
    c.create("breakerpolicies", policy())
    wait_for(lambda: c.settled_state("rl-guard") == "Closed", "the breaker")
    flow = client.FlowcontrolApiserverV1Api(api_client)
    name = f"breaker-test-{c.ns[-5:]}"
    flow.create_priority_level_configuration(
        as_body(
            {
                "metadata": {"name": name},
                "spec": {
                    "type": "Limited",
                    "limited": {
                        "nominalConcurrencyShares": 0,
                        "lendablePercent": 0,
                        "borrowingLimitPercent": 0,
                        "limitResponse": {"type": "Reject"},
                    },
                },
            }
        )
    )
    flow.create_flow_schema(
        as_body(
            {
                "metadata": {"name": name},
                "spec": {
                    "priorityLevelConfiguration": {"name": name},
                    "matchingPrecedence": 100,
                    "rules": [
                        {
                            "subjects": [
                                {
                                    "kind": "ServiceAccount",
                                    "serviceAccount": {
                                        "name": SERVICE_ACCOUNT,
                                        "namespace": RELEASE_NAMESPACE,
                                    },
                                }
                            ],
                            "resourceRules": [
                                {
                                    "verbs": ["*"],
                                    "apiGroups": ["*"],
                                    "resources": ["*"],
                                    "clusterScope": True,
                                    "namespaces": ["*"],
                                }
                            ],
                        }
                    ],
                },
            }
        )
    )
    try:
        before = api_errors(operator_process, "429")
        c.patch("breakers", "rl-guard", {"spec": {"override": "ForcedOpen"}})
        wait_for(
            lambda: api_errors(operator_process, "429") > before,
            "the operator to be throttled",
            timeout=30,
        )
        operator_process.wait_evaluations(3, f"{c.ns}/guard")  # it goes on, throttled
        assert not operator_process.dead(), "the operator died of 429s"
        throttled = api_errors(operator_process, "429") - before
    finally:
        flow.delete_flow_schema(name)
        flow.delete_priority_level_configuration(name)
    wait_for(
        lambda: c.settled_state("rl-guard") == "ForcedOpen",
        "containment once the API server lets the operator through",
        timeout=90,
    )
    assert c.get("trainingjobs", "rl")["spec"]["suspend"] is True
    FAULTS.append(
        (
            "API server rejecting the operator (APF, 429)",
            f"{throttled:.0f} 429s retried; contained after",
        )
    )


def test_conflicting_writes_are_redone_from_the_newer_state(
    cluster: Cluster, operator_process: Operator
) -> None:
    """An admin edits the clamped GPU quota in a burst while the breaker holds it: the
    operator's writes meet 409s (its view is older than the object) and it redoes them from
    the newer state until the clamp holds again."""
    c = cluster
    c.create("trainingjobs", trainingjob("rl", 1, 8))
    c.running("rl", 1)
    c.create("breakerpolicies", policy())
    wait_for(lambda: c.settled_state("rl-guard") == "Closed", "the breaker")
    c.patch("breakers", "rl-guard", {"spec": {"override": "ForcedOpen"}})
    wait_for(lambda: c.settled_state("rl-guard") == "ForcedOpen", "contained")
    before = api_errors(operator_process, "409")
    clamped = c.core.read_namespaced_resource_quota("breaker-gpu-clamp", c.ns)
    limit = (spec_of(clamped).hard or {})["requests.nvidia.com/gpu"]
    # Edits in a burst until one of the operator's writes meets a 409 (its view older than
    # the object): twenty at least, as many as it takes, within bounds.
    edits = 0
    while edits < 20 or (api_errors(operator_process, "409") == before and edits < 400):
        c.core.patch_namespaced_resource_quota(
            "breaker-gpu-clamp",
            c.ns,
            {"spec": {"hard": {"requests.nvidia.com/gpu": str(40 + edits % 20)}}},
        )
        edits += 1
    wait_for(
        lambda: (
            (spec_of(c.core.read_namespaced_resource_quota("breaker-gpu-clamp", c.ns)).hard or {})[
                "requests.nvidia.com/gpu"
            ]
            == limit
        ),
        "the clamp back after the burst",
        timeout=30,
    )
    assert not operator_process.dead()
    conflicts = api_errors(operator_process, "409") - before
    assert conflicts > 0, f"{edits} edits in a burst and the operator met no 409"
    FAULTS.append(
        (f"{edits} quota edits in a burst while clamped", f"{conflicts:.0f} 409s; clamp held")
    )
