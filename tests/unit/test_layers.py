"""What `breaker run` loads: in the operator's image the developer tooling is not there at
all; in a clone, where it is, the operator's process imports its command table and nothing
behind it (not the local cluster builder with `cryptography`, the demo or the simulator).

import-linter (in `make lint`) holds the layers between packages; this holds the one
entry point that sits above them all.
"""

from __future__ import annotations

import subprocess
import sys

# What `breaker run` must not load even in a clone, where the tooling is installed: its
# parser imports the tooling's command table, and nothing behind it.
TOOLING = (
    "breaker_tooling.localcluster.cluster",
    "breaker_tooling.localcluster.pki",
    "breaker_tooling.demo",
    "breaker_tooling.sim",
    "cryptography",
)


def test_the_operator_entry_point_loads_no_developer_tooling() -> None:
    probe = (
        "import sys, breaker.cli, breaker.runner\n"
        "breaker.cli.build_parser().parse_args(['run'])\n"
        f"print([m for m in sys.modules if m.startswith({TOOLING!r})])\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def cluster_status_without(module: str) -> subprocess.CompletedProcess[str]:
    """`breaker cluster status` in a process where ``module`` cannot be imported."""
    probe = (
        "import sys\n"
        f"sys.modules[{module!r}] = None\n"
        "from breaker import cli\n"
        "sys.exit(cli.main(['cluster', 'status']))\n"
    )
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)


def test_without_the_developer_tooling_its_commands_say_how_to_install_it() -> None:
    done = cluster_status_without("breaker_tooling")  # as in the operator's image
    assert done.returncode == 2
    assert "breaker cluster: the developer tooling is not installed here" in done.stderr
    assert "pip install -e . -e ./tooling" in done.stderr


def test_the_local_cluster_without_its_dependencies_says_how_to_install_them() -> None:
    done = cluster_status_without("cryptography")
    assert done.returncode == 1
    assert "pip install -e . -e ./tooling" in done.stderr
