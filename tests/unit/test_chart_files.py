"""The chart's copies stay equal to their sources: the default policy, the version."""

from __future__ import annotations

import json
import tomllib

import yaml

from breaker_tooling.localcluster.paths import repo_root

CHART = repo_root() / "helm" / "breaker"


def test_the_charts_default_policy_is_the_packages() -> None:
    packaged = repo_root() / "operator" / "breaker" / "detect" / "default-policy.yaml"
    copy = CHART / "files" / "default-policy.yaml"
    assert yaml.safe_load(copy.read_text()) == yaml.safe_load(packaged.read_text()), (
        f"{copy} differs from {packaged}: copy it over"
    )


def test_the_chart_ships_the_packages_version() -> None:
    project = tomllib.loads((repo_root() / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project["version"]


def test_the_dashboard_is_grafana_json_over_the_operators_metrics() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    assert all("breaker_" in expr for expr in exprs)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
