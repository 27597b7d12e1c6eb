"""Kueue on the local cluster: its real CRDs, RBAC and controller manager, built from its
Go module, with its admission webhooks served on loopback.

The API server calls a webhook at the URL its configuration names. Kueue's manifests name
a Service (``webhook-service``), which this cluster cannot route to; the harness rewrites
each webhook to ``url: https://127.0.0.1:<port>/<path>`` and gives the API server the
cluster CA as the ``caBundle``. Kueue serves that port with a certificate the same CA
issued for the IP address 127.0.0.1 (and nothing else), from the directory its
configuration names; its own certificate rotation is turned off, as it would look for
the Service and a Secret.

Only the webhooks of the kinds breaker works with are installed (Kueue's own objects and
batch/v1 Jobs, and the Trainer, JobSet and Ray kinds whose CRDs the cluster has):
Kueue's manifests also list Pods, Deployments and StatefulSets, whose webhooks with
``failurePolicy: Fail`` would make every pod of every test wait on Kueue.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import shutil
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from breaker_tooling.localcluster import pki
from breaker_tooling.localcluster.processes import Process
from breaker_tooling.localcluster.tools import Toolbox

NAMESPACE = "kueue-system"
ROLE = "breaker:kueue-manager"  # Kueue's own manager ClusterRole, under a local name
WEBHOOK_PREFIX = "breaker-local-kueue-"
# With its own certificate management off, Kueue v0.17 reads its metrics server's pair from
# this fixed path (cmd/kueue/main.go), where its Deployment would mount a Secret.
METRICS_CERTS = Path("/etc/kueue/metrics/certs")
# The API groups whose webhooks are installed.
GROUPS = frozenset({"kueue.x-k8s.io", "batch", "jobset.x-k8s.io", "trainer.kubeflow.org", "ray.io"})
# Kueue's integrations here: batch/v1 Jobs (a TrainingJob's Job too), and the kinds of the
# training stacks whose CRDs the local cluster installs.
FRAMEWORKS = ("batch/job",)


@dataclass(frozen=True)
class KueuePorts:
    webhook: int
    metrics: int
    health: int


@dataclass
class Kueue:
    directory: Path  # the cluster's state directory
    ports: KueuePorts
    keys: pki.Pki
    kubeconfig: Path  # Kueue's own identity's

    @property
    def home(self) -> Path:
        return self.directory / "kueue"

    @property
    def process(self) -> Process:
        return Process("kueue", self.directory)

    def start(self, tools: Toolbox, kubectl: Callable[..., str]) -> Callable[[], bool]:
        """Install the CRDs and RBAC, start the manager; ready once its webhook answers."""
        manifests = tools.manifests["kueue"]
        install_crds(kubectl, manifests / "config" / "components" / "crd" / "bases")
        kubectl("apply", "-f", "-", input=json.dumps(self._rbac(manifests)))
        self.home.mkdir(parents=True, exist_ok=True)
        certs = self.home / "certs"
        self.keys.issue_loopback_serving(certs / "tls.crt", certs / "tls.key", "kueue-webhook")
        if not METRICS_CERTS.exists():
            # Ours to remove when the cluster goes down (another cluster's is left alone).
            (self.home / "made-metrics-certs").touch()
        self.keys.issue_loopback_serving(
            METRICS_CERTS / "tls.crt", METRICS_CERTS / "tls.key", "kueue-metrics"
        )
        config = self.home / "config.yaml"
        config.write_text(yaml.safe_dump(self._configuration(certs)))
        self.process.start(
            [str(tools["kueue"]), f"--config={config}", f"--kubeconfig={self.kubeconfig}"]
        )
        return self._ready

    def install_webhooks(self, tools: Toolbox, kubectl: Callable[..., str]) -> None:
        """Point the API server at the running manager's webhooks (after it is ready: a
        webhook that answers nothing would refuse every Job meanwhile)."""
        source = tools.manifests["kueue"] / "config" / "components" / "webhook" / "manifests.yaml"
        configurations = list(webhook_configurations(source, self.ports.webhook, self.keys))
        kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": configurations}),
        )

    def remove_webhooks(self, kubectl: Callable[..., str]) -> None:
        """Before the manager stops: no webhook left pointing at a closed port."""
        for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
            kubectl(
                "delete",
                kind,
                "-l",
                "app.kubernetes.io/managed-by=breaker-local",
                "--ignore-not-found",
                "--wait=false",
            )

    def forget(self) -> None:
        """At ``cluster down``: the metrics pair under /etc, if this cluster wrote it."""
        if (self.home / "made-metrics-certs").exists():
            shutil.rmtree(METRICS_CERTS.parents[1], ignore_errors=True)

    def _ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.keys.ca_cert))
        health = f"http://127.0.0.1:{self.ports.health}/readyz"
        with urllib.request.urlopen(health, timeout=2) as response:
            if response.status != 200:
                return False
        # The webhook server answers TLS with the certificate the API server will check.
        webhook = f"https://127.0.0.1:{self.ports.webhook}/readyz"
        # A 404 is an answer: served, with a certificate the cluster CA vouches for.
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(webhook, timeout=2, context=context).close()
        return True

    def _configuration(self, certs: Path) -> dict[str, Any]:
        return {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.ports.health}"},
            "metrics": {"bindAddress": f"127.0.0.1:{self.ports.metrics}"},
            "webhook": {"host": "127.0.0.1", "port": self.ports.webhook, "certDir": str(certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": list(FRAMEWORKS)},
            "featureGates": {
                # Both read what only Kueue's Deployment has: the visibility API server a
                # certificate at /visibility, MultiKueue Secrets its role cannot read.
                "VisibilityOnDemand": False,
                "MultiKueue": False,
            },
        }

    def _rbac(self, manifests: Path) -> dict[str, Any]:
        """Kueue's own manager ClusterRole, bound to the user its kubeconfig names."""
        role = yaml.safe_load(
            (manifests / "config" / "components" / "rbac" / "role.yaml").read_text()
        )
        role["metadata"] = {"name": ROLE}
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": pki.KUEUE.user}
            ],
        }
        return {"apiVersion": "v1", "kind": "List", "items": [namespace, role, binding]}


def install_crds(kubectl: Callable[..., str], *directories: Path) -> None:
    """Every CRD manifest in the directories (a kustomization file beside them is not one),
    applied server-side (Kueue's Workload and KubeRay's RayJob CRDs are too large for
    kubectl's last-applied annotation), and waited on until served."""
    files, names = [], []
    for directory in directories:
        for path in sorted(directory.glob("*.yaml")):
            document = yaml.safe_load(path.read_text())
            if (document or {}).get("kind") == "CustomResourceDefinition":
                files += ["-f", str(path)]
                names.append(f"crd/{document['metadata']['name']}")
    kubectl("apply", "--server-side", "--force-conflicts", *files)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)


def webhook_configurations(source: Path, port: int, keys: pki.Pki) -> Iterator[dict[str, Any]]:
    """Kueue's webhook configurations, each webhook calling 127.0.0.1:``port`` directly,
    for the API groups in GROUPS only."""
    bundle = base64.b64encode(keys.ca_cert.read_bytes()).decode()
    for document in yaml.safe_load_all(source.read_text()):
        if not document:
            continue
        configuration = copy.deepcopy(document)
        kept = []
        for webhook in configuration.get("webhooks") or []:
            groups = {g for rule in webhook.get("rules") or [] for g in rule.get("apiGroups") or []}
            if not groups or not groups <= GROUPS:
                continue
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": bundle,
            }
            kept.append(webhook)
        name = configuration["metadata"]["name"]
        configuration["metadata"] = {
            "name": WEBHOOK_PREFIX + name,
            "labels": {"app.kubernetes.io/managed-by": "breaker-local"},
        }
        configuration["webhooks"] = kept
        yield configuration
