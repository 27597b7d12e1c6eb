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
    lines_matching(r"^  \+\s*\d+\.\ds  evidence captured: [1-9]\d* signals?, 1 pod$", timeline)
    lines_matching(
        r"^  \+\s*\d+\.\ds  egress revoked: quarantine NetworkPolicy rl-agent-demo-quarantine "
        r"\(1 pod\); other policies narrowed: allow-all-egress; open connections cut by the "
        r"node agent on real-node-0$",
        timeline,
    )
    lines_matching(r"^  \+\s*\d+\.\ds  TrainingJob rl-agent suspended$", timeline)
    lines_matching(
        r"^  \+\s*\d+\.\ds  GPUs \(real-node-0:8\) handed to team-c/finetune; "
        r"rome-lab's GPU quota clamped \(breaker-gpu-clamp\)$",
        timeline,
    )
    (took_line,) = lines_matching(
        r"^  time to contain \(evaluation to last action\): (\d+\.\d{3}) s$", timeline
    )
    assert float(took_line.group(1)) > 0
    # What the packets showed: the connections open at the trip were reset, nothing else
    # got out of the pod, and the cluster DNS still answered (the policy allows DNS).
    cut = (
        r", open since \+{opened}\.\ds: reset at \+\d+\.\ds, \d+\.\d s after the trip; "
        r"last byte \+\d+\.\ds \((none after the trip|\d+\.\d s after it)\)$"
    )
    lines_matching(r"^  reverse tunnel to 198\.51\.100\.4:22" + cut.format(opened="12"), timeline)
    # The signals fire on their own clocks: the trip may come before the agent joins the
    # pool at +30 s, and then nothing of it ever gets out.
    lines_matching(
        r"^  mining pool to 203\.0\.113\.7:3333("
        + cut.format(opened="30")
        + r"|: no connection ever got out \(the trip came first\)$)",
        timeline,
    )
    lines_matching(r"^  DNS TXT queries to 203\.0\.113\.53:53: [1-9]\d* answered", timeline)
    lines_matching(
        r"^  after the trip, from inside the agent's pod: pool refused, ssh refused, "
        r"outside dns refused, cluster dns REACHED$",
        timeline,
    )
    lines_matching(
        r"^  now: rome-lab/rl-agent Suspended; team-c/finetune Running on real-node-0$", timeline
    )
    lines_matching(
        r"quarantined, by every NetworkPolicy of rome-lab: pool 203\.0\.113\.7:3333 blocked, "
        r"ssh 198\.51\.100\.4:22 blocked$",
        timeline,
    )
    for placeholder in ("None", "nobody", "?", "in progress", "FAILED", "STILL OPEN", "MAY"):
        assert placeholder not in timeline, f"{placeholder!r} in the timeline:\n{timeline}"

    # The reset, and everything as it was: the job's connections can be made again.
    reset = out.split("reset done:")[1]
    lines_matching(r"^ breaker rl-agent-demo Closed, every action undone \(\d+\.\d s\)$", reset)
    lines_matching(r"^  rome-lab/rl-agent Running again on real-node-0$", reset)
    lines_matching(r"^  team-c/finetune Queued again", reset)
    lines_matching(
        r"^  NetworkPolicies of rome-lab: allow-all-egress, rl-agent-egress "
        r"\(quarantine removed\)$",
        reset,
    )
    lines_matching(r"^  ResourceQuotas of rome-lab: none \(GPU clamp removed\)$", reset)
    lines_matching(r"^  drops the node agent placed on real-node-0: none left$", reset)
    lines_matching(
        r"^  the agent's new pod reaches the outside again: tunnel and pool carrying bytes "
        r"\(pool 203\.0\.113\.7:3333 REACHABLE, ssh 198\.51\.100\.4:22 REACHABLE\)$",
        reset,
    )
    assert "None" not in reset
    # It started the cluster, so it took it down: nothing of it is left.
    assert not state.exists() or not any(state.iterdir()), sorted(state.iterdir())
