"""KubeRay's operator on the local cluster, built from its module, and the stand-in Ray
dashboard it talks to (``raydashboard.py``).

The operator needs no webhook. It runs as ``breaker:kuberay`` under KubeRay's own
ClusterRole, with ``HTTP_PROXY`` pointing at the stand-in dashboard: a RayJob's dashboard
requests (to the head Service's cluster DNS name) reach it on loopback and are never
resolved. The API server is reached over HTTPS, which no proxy setting touches.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from breaker_tooling.localcluster import pki
from breaker_tooling.localcluster.processes import Process
from breaker_tooling.localcluster.tools import Toolbox

ROLE = "breaker:kuberay-operator"  # KubeRay's own operator ClusterRole, under a local name


@dataclass
class KubeRay:
    directory: Path  # the cluster's state directory
    dashboard_port: int
    health_port: int
    kubeconfig: Path  # the operator's own identity's

    def start_dashboard(self) -> Callable[[], bool]:
        Process("ray-dashboard", self.directory).start(
            [
                sys.executable,
                "-m",
                "breaker_tooling.localcluster.raydashboard",
                f"--port={self.dashboard_port}",
            ]
        )

        def serving() -> bool:
            url = f"http://127.0.0.1:{self.dashboard_port}/api/jobs/"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        return serving

    def start_operator(self, tools: Toolbox, kubectl: Callable[..., str]) -> Callable[[], bool]:
        kubectl("apply", "-f", "-", input=json.dumps(self._rbac(tools.manifests["kuberay"])))
        proxy = f"http://127.0.0.1:{self.dashboard_port}"
        Process("ray-operator", self.directory).start(
            [
                str(tools["ray-operator"]),
                f"--kubeconfig={self.kubeconfig}",
                "--enable-leader-election=false",
                "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{self.health_port}",
                "--log-stdout-encoder=console",
            ],
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HTTP_PROXY": proxy,
                "http_proxy": proxy,
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
                # kwok's pods run nothing: no init container waiting for Ray's GCS, no probes
                # calling into the containers.
                "ENABLE_INIT_CONTAINER_INJECTION": "false",
                "ENABLE_PROBES_INJECTION": "false",
            },
        )

        def healthy() -> bool:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)

        return healthy

    def _rbac(self, manifests: Path) -> dict[str, Any]:
        role = yaml.safe_load((manifests / "config" / "rbac" / "role.yaml").read_text())
        role["metadata"] = {"name": ROLE}
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
                {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "User",
                    "name": pki.KUBERAY.user,
                }
            ],
        }
        return {"apiVersion": "v1", "kind": "List", "items": [role, binding]}
