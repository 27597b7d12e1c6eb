"""`helm upgrade` from the previous chart version to this one while breakers are open.

The previous version is the repository as it was just before the chart took its current
version (read from git, so it moves with each release): its chart, and its operator
(its `operator/` first on PYTHONPATH). It contains a TrainingJob (egress revoked, paused,
GPUs handed on) and a Deployment (egress revoked). Then the upgrade, as a rollout does it:
the new chart, the old operator stopped, the new one started. Watches opened before the
upgrade must see no gap: the quarantine NetworkPolicies neither deleted nor changed, the
job never unsuspended, no quarantined pod unlabelled. The new operator takes the Breakers
over (it drops the ownerReference the old one wrote on a Breaker that never tripped) and
the new chart's admission policy then refuses the tenant. A reset still undoes everything.
"""

from __future__ import annotations

import functools
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch

from breaker.constants import ADMISSION_PARAMS, GROUP, QUARANTINE_LABEL, VERSION
from breaker_tooling.localcluster import LocalCluster
from breaker_tooling.localcluster.paths import repo_root
from tests.cluster.scenes import (
    Cluster,
    deployment,
    deployment_policy,
    force_open,
    full_cluster,
    person,
    policy,
)
from tests.conftest import Operator, install_chart
from tests.helpers import wait_for
from tests.kube import as_body, meta_of

CHART = Path("helm") / "breaker" / "Chart.yaml"
HELPER = "helper-keep-training"
BREAKERS = ("rl-guard", HELPER)


def git(*args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo_root()), *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr} (the test needs history)"
    return done.stdout


def chart_version(text: str) -> str:
    return str(yaml.safe_load(text)["version"])


def previous_release() -> str:
    """The last commit before the chart took the version the working tree has."""
    current = chart_version((repo_root() / CHART).read_text())
    bump = None
    for commit in git("log", "--format=%H", "--", str(CHART)).split():  # newest first
        if chart_version(git("show", f"{commit}:{CHART}")) != current:
            break
        bump = commit
    if bump is None:
        return git("rev-parse", "HEAD").strip()  # the new version is not committed yet
    return git("rev-parse", f"{bump}^").strip()


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """The previous release's operator and chart, unpacked from git."""
    commit = previous_release()
    archive = subprocess.run(
        ["git", "-C", str(repo_root()), "archive", commit, "operator", "helm"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive.stdout, check=True)
    version = chart_version((tmp_path / CHART).read_text())
    assert version != chart_version((repo_root() / CHART).read_text()), commit
    print(f"\nupgrading from chart {version} (commit {commit[:12]})")
    return tmp_path


class Gaps:
    """Watches, from a resourceVersion on, for any moment containment was let go."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.threads: list[threading.Thread] = []
        self.watches: list[watch.Watch] = []
        self.stopped = False

    def follow(
        self, list_call: Callable[..., Any], judge: Callable[[str, Any], str | None], **kw: Any
    ) -> None:
        listed = list_call(**kw)
        version = (
            listed["metadata"]["resourceVersion"]
            if isinstance(listed, dict)
            else (listed.metadata.resource_version)
        )
        stream = watch.Watch()  # type: ignore[no-untyped-call]
        self.watches.append(stream)

        def run() -> None:
            try:
                for event in stream.stream(list_call, resource_version=version, **kw):  # type: ignore[no-untyped-call]
                    said = judge(event["type"], event["object"])
                    if said:
                        self.seen.append(said)
            except Exception as error:  # noqa: BLE001 - a watch that broke saw nothing more
                if not self.stopped:
                    self.seen.append(f"a watch broke: {error!r}")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> list[str]:
        self.stopped = True
        for stream in self.watches:
            stream.stop()  # type: ignore[no-untyped-call]
        return self.seen


@pytest.fixture
def gaps() -> Iterator[Gaps]:
    found = Gaps()
    yield found
    found.stop()


class Held:
    """What the previous version holds, and the judges of the watches on it."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.quarantines = {
            p["metadata"]["name"]: p["spec"]
            for p in c.netpols()
            if p["metadata"]["name"].endswith("-quarantine")
        }
        self.pods = quarantined_pods(c)

    def netpol(self, kind: str, found: Any) -> str | None:
        name = meta_of(found).name
        if name not in self.quarantines:
            return None
        if kind == "DELETED":
            return f"{name} deleted"
        spec = self.c.net.api_client.sanitize_for_serialization(found.spec)
        return None if spec == self.quarantines[name] else f"{name} changed: {spec}"

    @staticmethod
    def job(kind: str, found: dict[str, Any]) -> str | None:
        suspend = found["spec"].get("suspend")
        if found["metadata"]["name"] == "rl" and suspend is not True:
            return f"TrainingJob rl {kind} with suspend {suspend}"
        return None

    def pod(self, kind: str, found: Any) -> str | None:
        meta = meta_of(found)
        if (
            meta.name in self.pods
            and kind != "DELETED"
            and ((meta.labels or {}).get(QUARANTINE_LABEL) != HELPER)
        ):
            return f"pod {meta.name} lost its quarantine label"
        return None

    def watch(self, gaps: Gaps) -> None:
        c = self.c
        gaps.follow(c.net.list_namespaced_network_policy, self.netpol, namespace=c.ns)
        gaps.follow(
            c.custom.list_namespaced_custom_object,
            self.job,
            group=GROUP,
            version=VERSION,
            namespace=c.ns,
            plural="trainingjobs",
        )
        gaps.follow(c.core.list_namespaced_pod, self.pod, namespace=c.ns)


def contain(c: Cluster) -> Held:
    """A TrainingJob and a Deployment contained (forced open)."""
    full_cluster(c)
    c.apps.create_namespaced_deployment(c.ns, as_body(deployment("helper")))
    c.create("breakerpolicies", policy())
    c.create("breakerpolicies", deployment_policy("keep-training", "helper", "revokeEgress"))
    for breaker in BREAKERS:
        force_open(c, breaker)
    wait_for(lambda: c.state("waiting", c.other) == "Running", "the GPUs handed on", 30)
    held = Held(c)
    assert set(held.quarantines) == {f"{b}-quarantine" for b in BREAKERS}
    assert len(held.pods) == 2
    return held


def test_an_upgrade_keeps_every_containment(
    cluster: Cluster,
    local_cluster: LocalCluster,
    operator_process: Operator,
    operator_kubeconfig: Path,
    previous: Path,
    gaps: Gaps,
) -> None:
    c = cluster
    operator_process.stop()
    old = Operator(local_cluster, operator_kubeconfig, operator_process.log)
    try:
        install_chart(local_cluster, previous / "helm" / "breaker")
        old.start({"PYTHONPATH": str(previous / "operator")})
        held = contain(c)
        # The previous version made Breakers owned by their workload until they tripped:
        # filler's (never tripped) still is.
        (owner,) = c.breaker("filler-guard")["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("TrainingJob", "filler")
        held.watch(gaps)

        # The upgrade: the new chart, then the rollout (old operator out, new one in).
        install_chart(local_cluster, repo_root() / "helm" / "breaker")
        old.stop()
        operator_process.start()
        wait_for(
            lambda: not c.breaker("filler-guard")["metadata"].get("ownerReferences"),
            "the new operator to drop the ownerReference the previous one wrote",
            timeout=60,
        )
        wait_for(
            lambda: c.get("breakerholds", ADMISSION_PARAMS),
            "the admission policy's params",
            ignore=(client.ApiException,),
        )
        operator_process.wait_evaluations(2)
        for breaker in BREAKERS:
            assert c.settled_state(breaker) == "ForcedOpen"
        assert not gaps.stop(), f"containment let go during the upgrade: {gaps.seen}"

        # The new chart's admission policy holds the tenant.
        tenant = client.NetworkingV1Api(person_api(person(c, "tenant", "edit")))
        with pytest.raises(client.ApiException) as refused:
            tenant.delete_namespaced_network_policy(f"{HELPER}-quarantine", c.ns)
        assert refused.value.status == 403
        assert "ValidatingAdmissionPolicy" in (refused.value.body or "")

        # And the reset undoes what the previous version did.
        for breaker in BREAKERS:
            c.patch("breakers", breaker, {"spec": {"override": None, "reset": "admin"}})
        for breaker in BREAKERS:
            wait_for(functools.partial(closed, c, breaker), f"{breaker} reset")
        wait_for(lambda: not quarantined_pods(c), "the helper's pods released")
        # Generous: on a loaded machine the queue, the scheduler and kwok take their time.
        c.running_again("rl", "rl-guard")
    finally:
        old.stop()
        install_chart(local_cluster, repo_root() / "helm" / "breaker")
        if operator_process.dead():
            operator_process.start()


def closed(c: Cluster, breaker: str) -> bool:
    return c.settled_state(breaker) == "Closed"


def quarantined_pods(c: Cluster) -> set[str]:
    listed = c.core.list_namespaced_pod(c.ns, label_selector=QUARANTINE_LABEL).items
    return {str(meta_of(p).name) for p in listed if meta_of(p).deletion_timestamp is None}


def person_api(kubeconfig: Path) -> client.ApiClient:
    from kubernetes import config

    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api
