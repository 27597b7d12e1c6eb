"""The local cluster's parts that need no cluster: certificates, pid files, ports, targets."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from breaker_tooling.localcluster import ClusterError, LocalCluster, tools
from breaker_tooling.localcluster import cluster as cluster_module
from breaker_tooling.localcluster import pki as pki_module
from breaker_tooling.localcluster.cluster import Ports
from breaker_tooling.localcluster.processes import Process, port_is_free
from breaker_tooling.localcluster.prometheus import Targets


def test_certificates_chain_to_the_ca_and_name_who_they_are(tmp_path: Path) -> None:
    keys = pki_module.Pki(tmp_path)
    keys.ensure()
    ca = x509.load_pem_x509_certificate(keys.ca_cert.read_bytes())
    serving = x509.load_pem_x509_certificate(keys.serving_cert.read_bytes())
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc" in names.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {
        "127.0.0.1",
        "10.96.0.1",
    }

    admin = x509.load_pem_x509_certificate(keys.client_cert(pki_module.ADMIN).read_bytes())
    admin.verify_directly_issued_by(ca)
    organizations = admin.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == ["system:masters"]

    # The files load as a TLS client identity, the way client libraries use them.
    context = ssl.create_default_context(cafile=str(keys.ca_cert))
    context.load_cert_chain(keys.client_cert(pki_module.ADMIN), keys.client_key(pki_module.ADMIN))
    assert keys.client_key(pki_module.ADMIN).stat().st_mode & 0o077 == 0


def test_certificates_are_kept_across_calls(tmp_path: Path) -> None:
    keys = pki_module.Pki(tmp_path)
    keys.ensure()
    before = keys.ca_cert.read_bytes(), keys.sa_key.read_bytes()
    keys.ensure()
    assert (keys.ca_cert.read_bytes(), keys.sa_key.read_bytes()) == before


def test_kubeconfig_is_self_contained(tmp_path: Path) -> None:
    keys = pki_module.Pki(tmp_path)
    keys.ensure()
    config = keys.kubeconfig(pki_module.SCHEDULER, "https://127.0.0.1:1")
    users = config["users"]
    assert isinstance(users, list)
    (user,) = users
    assert user["name"] == "system:kube-scheduler"
    assert set(user["user"]) == {"client-certificate-data", "client-key-data"}


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[Process]:
    process = Process("sleeper", tmp_path)
    yield process
    process.stop(timeout=1)


def test_a_process_is_found_by_its_pid_file_and_stopped(sleeper: Process) -> None:
    pid = sleeper.start([sys.executable, "-c", "import time; time.sleep(60)"])
    assert sleeper.pid() == pid
    assert sleeper.stop()
    assert sleeper.pid() is None
    assert not sleeper.pid_file.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_a_pid_file_for_someone_elses_process_is_not_ours(sleeper: Process) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sleeper.pid_file.parent.mkdir(parents=True, exist_ok=True)
        sleeper.pid_file.write_text(f"{other.pid} 1\n")  # right pid, wrong start time
        assert sleeper.pid() is None
        assert not sleeper.stop()
        assert other.poll() is None, "stop must never signal a process it did not start"
    finally:
        other.kill()
        other.wait()


def test_a_process_started_elsewhere_and_adopted_is_stopped_by_name(sleeper: Process) -> None:
    """The demo's operator kept running (--keep) is stopped with the cluster."""
    kept = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sleeper.adopt(kept.pid)
        assert sleeper.pid() == kept.pid
        assert sleeper.stop()
        kept.wait(timeout=10)  # ended (its status already reaped by the stop)
        assert sleeper.pid() is None
    finally:
        if kept.poll() is None:
            kept.kill()
            kept.wait()


def test_a_process_that_dies_fails_fast_and_names_its_log(sleeper: Process) -> None:
    sleeper.start([sys.executable, "-c", "import sys; print('bad flag --x'); sys.exit(3)"])
    with pytest.raises(ClusterError) as failure:
        sleeper.wait_until(lambda: False, "ready", timeout=30)
    message = str(failure.value)
    assert message.startswith("sleeper: exited before ready")
    assert str(sleeper.log) in message
    assert "bad flag --x" in message


def test_a_process_that_never_gets_ready_times_out(sleeper: Process) -> None:
    sleeper.start([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(ClusterError, match=r"sleeper: not serving after 1s"):
        sleeper.wait_until(lambda: False, "serving", timeout=1)


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        assert not port_is_free(taken)
        # Every other port moved out of the way of a cluster that may be running.
        moved = {name: port + 900 for name, port in Ports().__dict__.items()}
        ports = Ports(**{**moved, "prometheus": taken})
        cluster = LocalCluster(directory=tmp_path, ports=ports)
        with pytest.raises(ClusterError) as failure:
            cluster._check_ports()
    assert str(failure.value).startswith("prometheus: port")
    assert "BREAKER_CLUSTER_PORT_OFFSET" in str(failure.value)


def test_port_offset_moves_every_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREAKER_CLUSTER_PORT_OFFSET", "1000")
    assert Ports.from_env().apiserver == Ports().apiserver + 1000
    monkeypatch.setenv("BREAKER_CLUSTER_PORT_OFFSET", "many")
    with pytest.raises(ClusterError, match="BREAKER_CLUSTER_PORT_OFFSET='many'"):
        Ports.from_env()


def test_an_offset_into_the_ephemeral_ports_is_refused_naming_the_largest_that_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_module, "ephemeral_range", lambda: (32768, 60999))
    monkeypatch.setenv("BREAKER_CLUSTER_PORT_OFFSET", "3000")
    assert max(Ports.from_env().__dict__.values()) < 32768
    monkeypatch.setenv("BREAKER_CLUSTER_PORT_OFFSET", "4000")
    with pytest.raises(ClusterError) as refused:
        Ports.from_env()
    assert "kueue_webhook on port 33444" in str(refused.value)
    assert "(32768-60999)" in str(refused.value)
    assert "use an offset below 3324" in str(refused.value)


def test_targets_are_file_sd_json(tmp_path: Path) -> None:
    targets = Targets(tmp_path)
    path = targets.add("sim", ["127.0.0.1:9400"], {"exporter": "dcgm"})
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9400"], "labels": {"exporter": "dcgm"}}
    ]
    targets.remove("sim")
    assert not path.exists()
    with pytest.raises(ValueError, match="target name"):
        targets.add("../escape", ["127.0.0.1:1"])


def test_every_module_pins_its_version_in_go_mod() -> None:
    for module in tools.MODULES:
        if module.version_of is None:  # the project's own programs: their sources key it
            assert module.version() == "local", module.name
        else:
            assert module.version().startswith("v"), module.name


def test_a_missing_go_toolchain_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(
        ClusterError, match=r"^go: the Go toolchain is not on PATH; install Go 1\.26"
    ):
        tools.go_binary()


def test_kube_version_is_stamped_for_servers_and_kubectl() -> None:
    flags = tools._kube_ldflags("v1.36.3")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.36.3" in flags
        assert f"-X {package}.gitMinor=36" in flags


def test_a_failing_build_names_the_module_and_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module_dir = tmp_path / "cluster" / "go" / "broken"
    module_dir.mkdir(parents=True)
    (module_dir / "go.mod").write_text("module example.invalid/broken\n\ngo 1.26.0\n")
    (module_dir / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    monkeypatch.setenv("BREAKER_REPO", str(tmp_path))
    module = tools.GoModule("broken", "example.invalid/broken", {"broken": "."})
    monkeypatch.setattr(module.__class__, "version", lambda self: "v0.0.1")
    target = tmp_path / "cache" / "broken-v0.0.1"
    target.parent.mkdir()
    with pytest.raises(ClusterError) as failure:
        tools._build(tools.go_binary(), module, target, "[1/1]", lambda _m: None)
    message = str(failure.value)
    assert message.startswith("broken: `go build .` failed with exit code 1")
    assert "undefined: undefined" in message
    assert str(target.with_name(target.name + ".build.log")) in message
    assert not target.exists(), "a failed build leaves nothing in the cache"
    assert not target.with_name(target.name + ".partial").exists()


def test_kueue_webhooks_call_loopback_and_only_for_the_kinds_used(tmp_path: Path) -> None:
    from breaker_tooling.localcluster.kueue import webhook_configurations

    keys = pki_module.Pki(tmp_path / "pki")
    keys.ensure()
    manifests = tmp_path / "manifests.yaml"
    service = {"name": "webhook-service", "namespace": "system"}
    manifests.write_text(
        json.dumps(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "mutating-webhook-configuration"},
                "webhooks": [
                    {
                        "name": "mjob.kb.io",
                        "clientConfig": {"service": {**service, "path": "/mutate-batch-v1-job"}},
                        "rules": [{"apiGroups": ["batch"], "resources": ["jobs"]}],
                    },
                    {
                        "name": "mpod.kb.io",
                        "clientConfig": {"service": {**service, "path": "/mutate--v1-pod"}},
                        "rules": [{"apiGroups": [""], "resources": ["pods"]}],
                    },
                ],
            }
        )
    )
    (found,) = webhook_configurations(manifests, 29443, keys)
    assert found["metadata"]["name"] == "breaker-local-kueue-mutating-webhook-configuration"
    (job,) = found["webhooks"]  # the pods' webhook is left out
    assert job["clientConfig"]["url"] == "https://127.0.0.1:29443/mutate-batch-v1-job"
    assert "service" not in job["clientConfig"]
    assert job["clientConfig"]["caBundle"]


def test_a_loopback_serving_certificate_names_127_0_0_1_only(tmp_path: Path) -> None:
    keys = pki_module.Pki(tmp_path / "pki")
    keys.ensure()
    cert, key = tmp_path / "w" / "tls.crt", tmp_path / "w" / "tls.key"
    keys.issue_loopback_serving(cert, key, "webhook")
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == []
    before = cert.read_bytes()
    keys.issue_loopback_serving(cert, key, "webhook")
    assert cert.read_bytes() == before  # kept while it exists


def test_the_stand_in_ray_dashboard_answers_proxy_requests(tmp_path: Path) -> None:
    """KubeRay's operator sends it whole URLs (HTTP_PROXY): submit, poll, stop."""
    import http.client
    import threading

    from breaker_tooling.localcluster.raydashboard import Dashboard

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = Dashboard(port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    head = "http://rj-x7k2p-head-svc.team.svc.cluster.local:8265"

    def call(method: str, path: str, body: object = None) -> tuple[int, object]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, head + path, body=payload)
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    try:
        assert call("GET", "/api/jobs/rj-1")[0] == 404
        assert call("POST", "/api/jobs/", {"submission_id": "rj-1", "entrypoint": "x"}) == (
            200,
            {"job_id": "rj-1", "submission_id": "rj-1"},
        )
        status, job = call("GET", "/api/jobs/rj-1")
        assert status == 200
        assert isinstance(job, dict)
        assert job["status"] == "RUNNING"
        assert call("POST", "/api/jobs/rj-1/stop", {})[0] == 200
        _, stopped = call("GET", "/api/jobs/rj-1")
        assert isinstance(stopped, dict)
        assert stopped["status"] == "STOPPED"
    finally:
        server.shutdown()
        server.server_close()


def test_clusters_a_whole_thousand_apart_share_no_port() -> None:
    """The demo's test starts a cluster 2,000 ports above the session's, and developers
    run a second one at another thousand: no two ports may end alike."""
    ports = list(Ports().__dict__.values())
    assert len({port % 1000 for port in ports}) == len(ports), sorted(p % 1000 for p in ports)


def test_a_cluster_that_did_not_stop_cleanly_starts_from_an_empty_store(tmp_path: Path) -> None:
    """etcd left by a killed run holds that run's cordoned nodes and GPU pods: never reused."""
    said: list[str] = []
    cluster = LocalCluster(directory=tmp_path, say=said.append)
    for sub in ("etcd/member", "pki", "logs", "prometheus/targets"):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "etcd" / "member" / "wal").write_text("the last run")
    (tmp_path / "logs" / "etcd.log").write_text("why it died")
    (tmp_path / "kubeconfig").write_text("old")
    cluster._forget_last_run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert (tmp_path / "logs" / "etcd.log").read_text() == "why it died"
    assert len(said) == 1
    assert "did not stop cleanly" in said[0]
    said.clear()
    cluster._forget_last_run()  # nothing left to forget: silent
    assert said == []
