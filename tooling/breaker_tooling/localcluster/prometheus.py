"""The local Prometheus: its configuration and the scrape targets others register.

Targets are files under ``targets/`` read through file-based service discovery, so tests
and the signal simulator add and remove scrape targets by writing a file, with no reload.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from breaker_tooling.localcluster.errors import ClusterError

SCRAPE_INTERVAL = "2s"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise ClusterError(
            "prometheus",
            "the prometheus server is not installed; on Debian or Ubuntu run "
            "`sudo apt-get install --no-install-recommends prometheus` (`make deps` does)",
        )
    return found


class Targets:
    """Scrape targets as file-SD JSON files, one file per name."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, name: str, addresses: list[str], labels: dict[str, str] | None = None) -> Path:
        if not _NAME.match(name):
            raise ValueError(f"target name {name!r}: use lower-case letters, digits and '-'")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.json"
        staging = path.with_suffix(".tmp")
        # Prometheus may read the file at any moment: write aside, then rename.
        staging.write_text(json.dumps([{"targets": addresses, "labels": labels or {}}]))
        staging.replace(path)
        return path

    def remove(self, name: str) -> None:
        (self.directory / f"{name}.json").unlink(missing_ok=True)


def write_config(
    path: Path,
    targets: Targets,
    kubelets: Kubelets | None = None,
    external_labels: dict[str, str] | None = None,
) -> None:
    """Scrape every file-SD target; keep the exporters' own labels (namespace, pod, ...);
    and the kubelets' cAdvisor, as a cluster's monitoring stack does. ``external_labels``
    name a replica to a Thanos sidecar."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            **({"external_labels": external_labels} if external_labels else {}),
        },
        "scrape_configs": [
            {
                "job_name": "breaker-local",
                # Exporters such as DCGM's label series with the pod they describe; the
                # scraped target is not that pod, so the series' labels must win.
                "honor_labels": True,
                "file_sd_configs": [
                    {"files": [str(targets.directory / "*.json")], "refresh_interval": "1s"}
                ],
            }
        ],
    }
    if kubelets is not None:
        config["scrape_configs"].append(kubelets.scrape_config())
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass(frozen=True)
class Kubelets:
    """The real kubelets' /metrics/cadvisor: over TLS, with a client certificate the kubelet
    authorises through the API server (nodes/metrics), listed by file-SD as nodes come up."""

    targets: Targets
    cert: Path
    key: Path

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": "kubelet-cadvisor",
            "scheme": "https",
            "metrics_path": "/metrics/cadvisor",
            # cAdvisor's series carry the pod's namespace and pod: those must win.
            "honor_labels": True,
            # The kubelet's serving certificate is self-signed (no serving CA here).
            "tls_config": {
                "cert_file": str(self.cert),
                "key_file": str(self.key),
                "insecure_skip_verify": True,
            },
            "file_sd_configs": [
                {"files": [str(self.targets.directory / "*.json")], "refresh_interval": "1s"}
            ],
        }


def command(config: Path, data: Path, port: int) -> list[str]:
    return [
        binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--web.enable-admin-api",
        "--storage.tsdb.retention.time=12h",
        "--log.level=warn",
    ]
