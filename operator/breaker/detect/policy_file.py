"""Reading a policy from a file (or the built-in default) for backtests and the simulator."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from breaker.api.policy import BreakerPolicySpec, ClusterBreakerPolicySpec, PolicySpecBase
from breaker.detect.policy_check import problems


class PolicyFileError(ValueError):
    """A policy file that cannot be used; names the file and the field."""


def default_text() -> str:
    return files("breaker.detect").joinpath("default-policy.yaml").read_text()


def load(path: Path | None) -> PolicySpecBase:
    """The policy's spec from ``path``, or the built-in default when None."""
    where = str(path) if path is not None else "the built-in default policy"
    try:
        raw: Any = yaml.safe_load(path.read_text() if path is not None else default_text())
    except (OSError, yaml.YAMLError) as error:
        raise PolicyFileError(f"{where}: cannot read: {error}") from error
    if not isinstance(raw, dict) or raw.get("kind") not in (
        "BreakerPolicy",
        "ClusterBreakerPolicy",
    ):
        raise PolicyFileError(f"{where}: kind must be BreakerPolicy or ClusterBreakerPolicy")
    model = BreakerPolicySpec if raw["kind"] == "BreakerPolicy" else ClusterBreakerPolicySpec
    try:
        spec = model.model_validate(raw.get("spec") or {})
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise PolicyFileError(f"{where}: spec.{field}: {first['msg']}") from error
    found = problems(spec)
    if found:
        raise PolicyFileError(f"{where}: {found[0]}")
    return spec
