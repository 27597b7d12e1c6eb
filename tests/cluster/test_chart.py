"""The Helm chart against the real control plane: lint, server-side dry run, the installed
release's RBAC (what the operator may not do, what tenants and people may), its alerts
checked by promtool and its dashboard's queries by the real Prometheus.

The session's operator runs with the chart's ServiceAccount (tests/conftest.py), so every
end-to-end test of the breaker also proves the RBAC is enough.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.conftest import (
    PEERING,
    RELEASE_NAMESPACE,
    SERVICE_ACCOUNT,
    service_account_kubeconfig,
)
from tests.kube import as_body

CHART = repo_root() / "helm" / "breaker"
KUBE = ("--kube-version", "1.36.0")  # helm template assumes 1.20 unless told; the chart needs 1.30
OPERATOR = f"system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}"


def run(
    cluster: LocalCluster, *command: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, env=cluster.env(), input=stdin, capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def template(cluster: LocalCluster, *values: str) -> str:
    server = run(cluster, "kubectl", "version", "-o", "json").stdout
    version = json.loads(server)["serverVersion"]["gitVersion"]
    sets = [arg for value in values for arg in ("--set", value)]
    return run(
        cluster,
        "helm",
        "template",
        "breaker",
        str(CHART),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        version,
        *sets,
    ).stdout


def documents(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def test_the_chart_lints_clean(local_cluster: LocalCluster) -> None:
    done = run(local_cluster, "helm", "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in done.stdout


def test_bad_values_are_refused_naming_the_value(local_cluster: LocalCluster) -> None:
    for value, named in (
        ("defaultPolicy.mode=Enforced", "defaultPolicy.mode"),
        ("replicas=9", "replicas"),
        ("replicas=2,peering.enabled=false", "peering.enabled"),
        ("peering.lifetime=1", "lifetime"),
        ("prometheus.url=prometheus:9090", "prometheus.url"),
        ("shards[0].name=Team_A", "name"),
        ("shards[0].name=a,shards[0].namespaces={team a}", "namespaces"),
        ("shards[0].name=a,shards[1].name=a,shards[1].namespaces={x}", "used twice"),
        ("shards[0].name=a,shards[1].name=b", "only one shard may leave out namespaces"),
    ):
        done = run(
            local_cluster,
            "helm",
            "template",
            str(CHART),
            "--kube-version",  # past the chart's own kubeVersion check, to the values'
            "1.36.0",
            "--set",
            value,
            check=False,
        )
        assert done.returncode != 0, value
        assert named.split(".")[-1] in done.stderr, done.stderr


def test_without_the_params_crd_the_policy_is_refused_naming_the_command(
    local_cluster: LocalCluster, crds: None, tmp_path: Path
) -> None:
    """With failurePolicy Fail, a params kind the API server does not know would refuse
    every request the policy matches. helm upgrade never installs CRDs: the chart checks.
    (The cluster has the CRD; a copy of the chart asks for one it does not have.)"""
    copy = tmp_path / "breaker"
    subprocess.run(["cp", "-r", str(CHART), str(copy)], check=True)
    policy = copy / "templates" / "admission-policy.yaml"
    text = policy.read_text()
    assert text.count('"breakerholds.breaker.dev"') == 1
    policy.write_text(text.replace('"breakerholds.breaker.dev"', '"absent.breaker.dev"'))
    server = ("--dry-run=server", "--namespace", RELEASE_NAMESPACE, "--generate-name")
    done = run(local_cluster, "helm", "install", str(copy), *server, check=False)
    assert done.returncode != 0
    assert "kubectl apply --server-side -f crds/" in done.stderr, done.stderr
    assert "admissionPolicy.enabled=false" in done.stderr
    # The chart itself renders offline too (helm template does no lookup); against this
    # cluster, every test's `helm upgrade --install` renders it.
    assert "kind: BreakerHold" in template(local_cluster)


SHARDS = ("shards[0].name=a", "shards[0].namespaces={team-a-*,research}", "shards[1].name=rest")


def test_sharded_the_chart_runs_the_queue_and_each_shard_apart(
    local_cluster: LocalCluster, chart: None
) -> None:
    from breaker.cli import build_parser
    from breaker.serving import Serving

    rendered = template(local_cluster, *SHARDS)
    docs = documents(rendered)
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) == {"breaker-queue", "breaker-shard-a", "breaker-shard-rest"}
    selectors = [
        tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for d in deployments.values()
    ]
    assert len(set(selectors)) == 3, "two Deployments would own the same pods"
    served = {}
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["args"])
        parts = args.serve.split(",")
        Serving.of(parts, args.shard_namespaces or [], args.shard)  # accepted as given
        served[name] = (parts, args.shard_namespaces, args.peering)
    assert served == {
        "breaker-queue": (["queue"], None, f"{PEERING}-queue"),
        "breaker-shard-a": (["breakers"], ["team-a-*", "research"], f"{PEERING}-shard-a"),
        "breaker-shard-rest": (["breakers"], ["*,!team-a-*,!research"], f"{PEERING}-shard-rest"),
    }
    peerings = {d["metadata"]["name"] for d in docs if d["kind"] == "ClusterKopfPeering"}
    assert peerings == {f"{PEERING}-queue", f"{PEERING}-shard-a", f"{PEERING}-shard-rest"}
    done = run(local_cluster, "kubectl", "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "(server dry run)" in done.stdout


def test_the_rendered_chart_passes_the_api_servers_dry_run(
    local_cluster: LocalCluster, chart: None
) -> None:
    rendered = template(local_cluster)
    kinds = {doc["kind"] for doc in documents(rendered)}
    assert {"Deployment", "ClusterRole", "ClusterBreakerPolicy", "ClusterKopfPeering"} <= kinds
    done = run(local_cluster, "kubectl", "apply", "--dry-run=server", "-f", "-", stdin=rendered)
    assert "(server dry run)" in done.stdout


def test_the_default_policy_is_dry_run_and_every_pod_hardened(local_cluster: LocalCluster) -> None:
    docs = documents(template(local_cluster))
    policy = next(d for d in docs if d["kind"] == "ClusterBreakerPolicy")
    assert policy["spec"]["mode"] == "DryRun"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    hardening = container["securityContext"]
    assert hardening == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["memory"]
    assert "--peering=breaker" in container["args"]


def test_no_rule_grants_everything(local_cluster: LocalCluster) -> None:
    docs = documents(template(local_cluster))
    roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role")]
    assert len(roles) >= 5
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: {rule}"


@pytest.fixture(scope="module")
def operator_api(
    local_cluster: LocalCluster, chart: None, tmp_path_factory: pytest.TempPathFactory
) -> client.ApiClient:
    from kubernetes import config

    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    service_account_kubeconfig(local_cluster, RELEASE_NAMESPACE, SERVICE_ACCOUNT, path)
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(path)
    )
    return api


def refused(call: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        call(*args, **kwargs)
    except client.ApiException as error:
        return bool(error.status == 403)
    return False


def test_the_operators_token_is_refused_what_it_does_not_need(
    operator_api: client.ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_secret(
        namespace, as_body({"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    )
    as_operator = client.CoreV1Api(operator_api)
    # Authenticated and allowed what it uses...
    assert as_operator.list_namespaced_pod(namespace).items is not None
    # ...and not what it does not.
    assert refused(as_operator.list_secret_for_all_namespaces)
    assert refused(as_operator.read_namespaced_secret, "s", namespace)
    assert refused(as_operator.delete_namespace, namespace)
    assert refused(as_operator.connect_post_namespaced_pod_exec, "any", namespace, command=["true"])
    assert refused(client.AppsV1Api(operator_api).delete_namespaced_deployment, "any", namespace)
    # No ConfigMaps (its admission params are BreakerHolds).
    assert refused(as_operator.delete_namespaced_config_map, "kube-root-ca.crt", namespace)
    assert refused(as_operator.read_namespaced_config_map, "kube-root-ca.crt", namespace)
    assert refused(as_operator.list_config_map_for_all_namespaces)
    assert refused(
        client.RbacAuthorizationV1Api(operator_api).create_cluster_role,
        {"metadata": {"name": "escalate"}, "rules": []},
    )


def can(cluster: LocalCluster, who: str, verb: str, resource: str, namespace: str | None) -> bool:
    where = ["-n", namespace] if namespace else []
    resource, _, subresource = resource.partition("/")
    if subresource:
        where += ["--subresource", subresource]
    asked = ["kubectl", "auth", "can-i", verb, resource, "--as", who, *where]
    done = run(cluster, *asked, check=False)
    return done.stdout.strip() == "yes"


def bind(cluster: LocalCluster, namespace: str, account: str, role: str) -> str:
    run(cluster, "kubectl", "-n", namespace, "create", "serviceaccount", account)
    run(
        cluster,
        "kubectl",
        "-n",
        namespace,
        "create",
        "rolebinding",
        f"{account}-{role}",
        f"--clusterrole={role}",
        f"--serviceaccount={namespace}:{account}",
    )
    return f"system:serviceaccount:{namespace}:{account}"


def test_people_get_what_their_role_says(
    local_cluster: LocalCluster, chart: None, namespace: str
) -> None:
    def may(who: str, verb: str, resource: str, cluster_scoped: bool = False) -> bool:
        return can(local_cluster, who, verb, resource, None if cluster_scoped else namespace)

    editor = bind(local_cluster, namespace, "editor", "edit")
    admin = bind(local_cluster, namespace, "ns-admin", "admin")
    viewer = bind(local_cluster, namespace, "viewer", "breaker-viewer")
    operator_ = bind(local_cluster, namespace, "oncall", "breaker-admin")

    # A tenant (edit) runs jobs and sees its breakers, but cannot let a job out.
    assert may(editor, "create", "trainingjobs.breaker.dev")
    assert may(editor, "get", "breakers.breaker.dev")
    assert not may(editor, "patch", "breakers.breaker.dev")
    assert not may(editor, "patch", "breakerpolicies.breaker.dev")
    assert not may(editor, "list", "clusterbreakerpolicies.breaker.dev", cluster_scoped=True)
    # A namespace admin adds policies of its own, still never resets.
    assert may(admin, "create", "breakerpolicies.breaker.dev")
    assert not may(admin, "patch", "breakers.breaker.dev")
    # breaker-viewer reads; breaker-admin resets and forces.
    assert may(viewer, "list", "breakers.breaker.dev")
    assert may(viewer, "list", "networkpolicies.networking.k8s.io")
    assert not may(viewer, "patch", "breakers.breaker.dev")
    assert may(operator_, "patch", "breakers.breaker.dev")
    assert may(operator_, "create", "breakerpolicies.breaker.dev")
    assert not may(operator_, "patch", "breakers.breaker.dev/status")
    # Past the admission policy: breaker-admin and the operator, no tenant.
    assert may(operator_, "bypass", "breakers.breaker.dev")
    assert may(
        f"system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}",
        "bypass",
        "breakers.breaker.dev",
    )
    for tenant in (editor, admin, viewer):
        assert not may(tenant, "bypass", "breakers.breaker.dev")
    # What the admission policy reads is the operator's to write: no role writes it, and a
    # tenant does not even read it.
    operator_sa = f"system:serviceaccount:{RELEASE_NAMESPACE}:{SERVICE_ACCOUNT}"
    assert may(operator_sa, "patch", "breakerholds.breaker.dev")
    assert may(operator_, "list", "breakerholds.breaker.dev")
    assert may(viewer, "list", "breakerholds.breaker.dev")
    for person_ in (editor, admin, viewer, operator_):
        for verb in ("create", "patch", "delete"):
            assert not may(person_, verb, "breakerholds.breaker.dev"), (person_, verb)
    assert not may(editor, "get", "breakerholds.breaker.dev")


def test_the_alerts_are_valid_rules(local_cluster: LocalCluster, tmp_path: Path) -> None:
    docs = documents(template(local_cluster, "prometheusRule.enabled=true"))
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert names == ["BreakerTripped", "BreakerSignalsUnknown", "BreakerOperatorDown"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = run(local_cluster, "promtool", "check", "rules", str(path))
    assert "SUCCESS: 3 rules found" in done.stdout


def test_the_dashboards_queries_parse_on_the_real_prometheus(
    local_cluster: LocalCluster,
) -> None:
    docs = documents(template(local_cluster, "grafanaDashboard.enabled=true"))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["breaker.json"])
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$__rate_interval", "1m")
            url = f"{local_cluster.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
                {"query": expr}
            )
            with urllib.request.urlopen(url, timeout=10) as response:
                assert json.load(response)["status"] == "success", (panel["title"], expr)


def test_the_service_monitor_scrapes_the_metrics_port(local_cluster: LocalCluster) -> None:
    docs = documents(template(local_cluster, "serviceMonitor.enabled=true"))
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    done = run(
        local_cluster,
        "helm",
        "template",
        str(CHART),
        *KUBE,
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "metrics.service.enabled=false",
        check=False,
    )
    assert done.returncode != 0
    assert "metrics.service.enabled" in done.stderr


def test_the_operator_accepts_the_arguments_the_chart_and_image_give_it(
    local_cluster: LocalCluster,
) -> None:
    from breaker.cli import build_parser

    docs = documents(template(local_cluster, "prometheus.url=http://thanos-query.obs:9090"))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.prometheus_url == "http://thanos-query.obs:9090"
    assert (args.namespace, args.peering, args.metrics_port) == (RELEASE_NAMESPACE, "breaker", 8081)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.liveness == f"http://0.0.0.0:{ports['liveness']}/healthz"
    cmd = next(
        line
        for line in (repo_root() / "Dockerfile").read_text().splitlines()
        if line.startswith("CMD ")
    )
    assert build_parser().parse_args(json.loads(cmd[4:])).command == "run"
