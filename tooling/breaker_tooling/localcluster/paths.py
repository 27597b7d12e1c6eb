"""Where the local cluster keeps things.

- The build cache (``$BREAKER_CACHE_DIR``, default ``~/.cache/breaker``) holds the Go-built
  binaries, one folder per tool and version; it survives ``cluster down`` so the slow
  build happens once per machine.
- The state directory (``$BREAKER_CLUSTER_DIR``, default ``~/.local/state/breaker/cluster``)
  holds everything a running cluster needs: certificates, kubeconfigs, etcd and Prometheus
  data, pid files and logs. ``cluster down`` removes it.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The checkout this package runs from (the local cluster is a development tool)."""
    configured = os.environ.get("BREAKER_REPO")
    if configured:
        return Path(configured)
    # tooling/breaker_tooling/localcluster/paths.py -> the repository root is three levels above.
    return Path(__file__).resolve().parents[3]


def go_modules_dir() -> Path:
    return repo_root() / "cluster" / "go"


def manifests_dir() -> Path:
    return repo_root() / "cluster" / "manifests"


def cache_dir() -> Path:
    configured = os.environ.get("BREAKER_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "breaker"


def state_dir() -> Path:
    configured = os.environ.get("BREAKER_CLUSTER_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "breaker" / "cluster"
