"""The local Prometheus: its configuration and the scrape targets others register.

Targets are files under ``targets/`` read through file-based service discovery, so tests
and the signal simulator add and remove scrape targets by writing a file, with no reload.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

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


def write_config(path: Path, targets: Targets) -> None:
    """Scrape every file-SD target; keep the exporters' own labels (namespace, pod, ...)."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
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
    path.write_text(yaml.safe_dump(config, sort_keys=False))


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
