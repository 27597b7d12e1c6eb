"""`make demo`, the project's main job, run as a new user runs it.

`breaker demo` as a subprocess, on a local cluster of its own (its own state directory and
ports, beside the session's) that it starts, uses and removes, as on a machine where no
cluster runs. Its exit code and every line of its timeline are checked: the facts the
operator recorded once containment finished, then the reset and what it restored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

DEMO_RUNS: list[tuple[float, str]] = []  # (seconds, the timeline), for the run's summary
# Its own ports: far enough from the session cluster's to never meet them.
PORT_SHIFT = 2000


def lines_matching(pattern: str, text: str) -> list[re.Match[str]]:
    found = [m for line in text.splitlines() if (m := re.search(pattern, line))]
    assert found, f"no line matches {pattern!r} in the demo's output:\n{text}"
    return found


def test_make_demos_main_job_contains_the_rome_incident_and_undoes_it(tmp_path: Path) -> None:
    offset = int(os.environ.get("BREAKER_CLUSTER_PORT_OFFSET", "0")) + PORT_SHIFT
    state = tmp_path / "cluster"
    env = {
        **os.environ,
        "BREAKER_CLUSTER_DIR": str(state),
        "BREAKER_CLUSTER_PORT_OFFSET": str(offset),
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "breaker.cli", "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{out[-6000:]}\n{result.stderr[-4000:]}"
    )
    timeline = out.split("Timeline (from the start of the replay):")[1].split("\n\n")[0]
    DEMO_RUNS.append((took, timeline))

    # The incident, then the trip: each line a fact the operator recorded.
    lines_matching(r"^  \+\s*\d+\.\ds  signal seen: \w[\w-]*=\S+.* \(rule \S+\)$", timeline)
    lines_matching(r"^  \+\s*\d+\.\ds  breaker rl-agent-demo Open$", timeline)
    lines_matching(r"^  \+\s*\d+\.\ds  evidence captured: [1-9]\d* signals, 2 pods$", timeline)
    lines_matching(
        r"^  \+\s*\d+\.\ds  egress revoked: quarantine NetworkPolicy rl-agent-demo-quarantine "
        r"\(2 pods\); other policies narrowed: allow-all-egress$",
        timeline,
    )
    lines_matching(r"^  \+\s*\d+\.\ds  TrainingJob rl-agent suspended$", timeline)
    (handoff,) = lines_matching(
        r"^  \+\s*\d+\.\ds  GPUs \((gpu-node-\d):8, (gpu-node-\d):8\) handed to team-c/finetune; "
        r"rome-lab's GPU quota clamped \(breaker-gpu-clamp\)$",
        timeline,
    )
    (took_line,) = lines_matching(
        r"^  time to contain \(evaluation to last action\): (\d+\.\d{3}) s$", timeline
    )
    assert 0 < float(took_line.group(1)) < 30
    # What the cluster then shows agrees: the queued job runs on exactly the freed nodes.
    (now,) = lines_matching(
        r"^  now: rome-lab/rl-agent Suspended; team-c/finetune Running on (\S+)$", timeline
    )
    assert sorted(now.group(1).split(",")) == sorted(handoff.groups())
    lines_matching(
        r"quarantined, by every NetworkPolicy of rome-lab: mining pool 203\.0\.113\.7:3333 "
        r"blocked, ssh 198\.51\.100\.4:22 blocked$",
        timeline,
    )
    for placeholder in ("None", "nobody", "?", "in progress", "FAILED"):
        assert placeholder not in timeline, f"{placeholder!r} in the timeline:\n{timeline}"

    # The reset, and everything as it was.
    reset = out.split("reset done:")[1]
    lines_matching(r"^ breaker rl-agent-demo Closed, every action undone \(\d+\.\d s\)$", reset)
    lines_matching(r"^  rome-lab/rl-agent Running again on gpu-node-\d,gpu-node-\d$", reset)
    lines_matching(r"^  team-c/finetune Queued again", reset)
    lines_matching(
        r"^  NetworkPolicies of rome-lab: allow-all-egress, rl-agent-egress "
        r"\(quarantine removed\)$",
        reset,
    )
    lines_matching(r"^  ResourceQuotas of rome-lab: none \(GPU clamp removed\)$", reset)
    lines_matching(
        r"^  the agent's pods, by every NetworkPolicy of rome-lab: mining pool "
        r"203\.0\.113\.7:3333 REACHABLE, ssh 198\.51\.100\.4:22 REACHABLE$",
        reset,
    )
    assert "None" not in reset
    # It started the cluster, so it took it down: nothing of it is left.
    assert not state.exists() or not any(state.iterdir()), sorted(state.iterdir())
