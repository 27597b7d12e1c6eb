"""The recording rules and the signals that use them, from the docs page they moved to
from the README (docs/how-to/large-prometheus.md): promtool takes the rules, the policy
schema takes the signals, and the queries read only what the rules record or the
exporters export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from breaker.api.policy import BreakerPolicySpec
from breaker.detect import engine
from breaker_tooling.localcluster import prometheus

PAGE = Path(__file__).parents[2] / "docs" / "how-to" / "large-prometheus.md"


def blocks() -> list[str]:
    section = PAGE.read_text().split("# A large Prometheus", 1)[1]
    return [
        re.sub(r"^  ", "", block, flags=re.M)
        for block in re.findall(r"```yaml\n(.*?)```", section, re.S)
    ]


def promtool_check(rules: str, where: Path) -> None:
    path = where / "rules.yaml"
    path.write_text(rules)
    promtool = shutil.which("promtool") or str(Path(prometheus.binary()).with_name("promtool"))
    checked = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_recording_rules_pass_promtool(tmp_path: Path) -> None:
    promtool_check(blocks()[0], tmp_path)


def test_the_signal_queries_parse(tmp_path: Path) -> None:
    """promtool parses PromQL in rules: each signal's query as a rule's expression."""
    signals = yaml.safe_load(blocks()[1])["signals"]
    rules = [
        {"record": f"check:{s['name'].replace('-', '_')}", "expr": s["query"]} for s in signals
    ]
    promtool_check(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}), tmp_path)


def test_the_signals_on_recorded_series_are_valid_policy_signals() -> None:
    recorded = {r["record"] for g in yaml.safe_load(blocks()[0])["groups"] for r in g["rules"]}
    signals = yaml.safe_load(blocks()[1])["signals"]
    spec = BreakerPolicySpec.model_validate({"signals": signals})
    compiled = engine.compile_policy(spec).signals
    assert [s.name for s in compiled] == ["tensor-collapse", "egress-spike"]
    for signal in compiled:
        assert any(name in signal.query for name in recorded), signal.query
