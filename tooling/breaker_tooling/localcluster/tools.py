"""Build the cluster's Go binaries once per version and cache them.

Each folder under ``cluster/go`` is a small wrapper module whose go.mod pins one upstream
release; its go.mod is the single place a version is chosen. A build's cache key is the
tool's version plus a hash of everything that shapes the binary (go.mod, go.sum, the
wrapper's sources, the link flags and the Go version), so a changed pin rebuilds and an
unchanged one never does.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breaker_tooling.localcluster import paths
from breaker_tooling.localcluster.errors import ClusterError, log_tail

MINIMUM_GO = (1, 26)

# Measured on the project's 2-core machine (docs/figures.md): said up front so nobody
# thinks a silent first build has hung.
COLD_BUILD_MINUTES = 23


@dataclass(frozen=True)
class GoModule:
    """One wrapper module under cluster/go and the binaries it builds."""

    name: str
    version_of: str | None  # the upstream module whose pinned version names the build
    binaries: dict[str, str]  # binary name -> Go package path to build
    ldflags: Callable[[str], list[str]] = field(default=lambda _version: [])
    cgo: bool = False  # containerd needs cgo; everything else is built static
    tags: tuple[str, ...] = ()
    # Files the upstream module ships (CRDs, webhook manifests), copied into the build's
    # folder under manifests/: (module path, file or folder inside it).
    manifests: tuple[tuple[str, str], ...] = ()

    @property
    def directory(self) -> Path:
        return paths.go_modules_dir() / self.name

    def version(self) -> str:
        """The pinned upstream version; ``local`` for the project's own programs (their
        sources are in the cache key)."""
        if self.version_of is None:
            return "local"
        gomod = (self.directory / "go.mod").read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.version_of)} (v\S+)", gomod, re.M)
        if match is None:
            raise ClusterError(
                self.name, f"{self.directory / 'go.mod'} does not pin {self.version_of}"
            )
        return match.group(1)


def _kube_ldflags(version: str) -> list[str]:
    major, minor = version.lstrip("v").split(".")[:2]
    built = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = []
    # kubectl reads client-go's copy of the version, the servers component-base's.
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={version}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitCommit=",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate={built}",
        ]
    return flags


def _containerd_ldflags(version: str) -> list[str]:
    return [f"-X github.com/containerd/containerd/v2/version.Version={version}"]


def _kube_router_ldflags(version: str) -> list[str]:
    return [f"-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version={version}"]


def _helm_ldflags(version: str) -> list[str]:
    return [
        f"-X helm.sh/helm/v3/internal/version.version={version}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
    ]


def _thanos_ldflags(version: str) -> list[str]:
    return [f"-X github.com/prometheus/common/version.Version={version.lstrip('v')}"]


MODULES: tuple[GoModule, ...] = (
    GoModule(
        name="etcd",
        version_of="go.etcd.io/etcd/server/v3",
        binaries={"etcd": "."},  # etcd's version is a constant in its api module: already true
    ),
    GoModule(
        name="kube",
        version_of="k8s.io/kubernetes",
        binaries={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
            "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            # The real node's.
            "kubelet": "k8s.io/kubernetes/cmd/kubelet",
            "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
        },
        ldflags=_kube_ldflags,
    ),
    GoModule(
        name="kwok",
        version_of="sigs.k8s.io/kwok",
        binaries={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ),
    GoModule(
        name="kube-state-metrics",
        version_of="k8s.io/kube-state-metrics/v2",
        binaries={"kube-state-metrics": "k8s.io/kube-state-metrics/v2"},
    ),
    GoModule(
        name="helm",
        version_of="helm.sh/helm/v3",
        binaries={"helm": "helm.sh/helm/v3/cmd/helm"},
        ldflags=_helm_ldflags,
    ),
    GoModule(
        name="kind",
        version_of="sigs.k8s.io/kind",
        binaries={"kind-config-check": "."},
    ),
    GoModule(
        name="containerd",
        version_of="github.com/containerd/containerd/v2",
        binaries={
            name: f"github.com/containerd/containerd/v2/cmd/{name}"
            for name in ("containerd", "containerd-shim-runc-v2", "ctr")
        },
        ldflags=_containerd_ldflags,
        cgo=True,
        tags=("no_btrfs",),  # no btrfs headers here, and no btrfs snapshotter wanted
    ),
    GoModule(
        name="kube-router",
        version_of="github.com/cloudnativelabs/kube-router/v2",
        binaries={"kube-router": "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"},
        ldflags=_kube_router_ldflags,
    ),
    GoModule(
        name="kueue",
        version_of="sigs.k8s.io/kueue",
        binaries={"kueue": "sigs.k8s.io/kueue/cmd/kueue"},
        manifests=(
            ("sigs.k8s.io/kueue", "config/components/crd/bases"),
            ("sigs.k8s.io/kueue", "config/components/webhook/manifests.yaml"),
            ("sigs.k8s.io/kueue", "config/components/rbac/role.yaml"),
        ),
    ),
    GoModule(
        name="kuberay",
        version_of="github.com/ray-project/kuberay/ray-operator",
        binaries={"ray-operator": "github.com/ray-project/kuberay/ray-operator"},
        manifests=(
            ("github.com/ray-project/kuberay/ray-operator", "config/crd/bases"),
            ("github.com/ray-project/kuberay/ray-operator", "config/rbac/role.yaml"),
        ),
    ),
    GoModule(
        name="trainer",
        version_of="github.com/kubeflow/trainer/v2",
        binaries={},  # its controller is not run here (docs/integrations/trainer.md says why)
        manifests=(
            ("github.com/kubeflow/trainer/v2", "manifests/base/crds"),
            ("sigs.k8s.io/jobset", "config/components/crd/bases"),
        ),
    ),
    GoModule(
        name="thanos",
        version_of="github.com/thanos-io/thanos",
        binaries={"thanos": "github.com/thanos-io/thanos/cmd/thanos"},  # query and sidecar
        ldflags=_thanos_ldflags,
        # Its unsafe label code assumes Prometheus's slice labels: without the tag the
        # sidecar panics marshalling its first answer.
        tags=("netgo", "slicelabels"),
    ),
    GoModule(
        name="node",
        version_of=None,
        binaries={
            name: f"./{name}" for name in ("pause", "agent", "dnsd", "outside", "netns-proxy")
        },
    ),
)


def go_binary() -> str:
    """The go command, checked to be new enough for the wrapper modules."""
    go = shutil.which("go")
    if go is None:
        raise ClusterError(
            "go",
            "the Go toolchain is not on PATH; install Go "
            f"{'.'.join(map(str, MINIMUM_GO))} or newer (the cluster binaries are built from "
            "the Go modules in cluster/go)",
        )
    out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=False)
    match = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    if match is None or (int(match.group(1)), int(match.group(2))) < MINIMUM_GO:
        raise ClusterError(
            "go",
            f"found {out.stdout.strip() or 'an unknown Go'} at {go}; the wrapper modules need "
            f"Go {'.'.join(map(str, MINIMUM_GO))} or newer",
        )
    return go


def _cache_key(module: GoModule, go_version: str) -> str:
    digest = hashlib.sha256()
    for path in sorted(module.directory.rglob("*")):
        if path.suffix in {".mod", ".sum", ".go"}:
            digest.update(str(path.relative_to(module.directory)).encode())
            digest.update(path.read_bytes())
    # What is built and how: a binary added to a module is a new build.
    shape = [module.binaries, module.cgo, module.tags, module.manifests]
    digest.update(json.dumps(shape, sort_keys=True).encode())
    # Build dates change every build; hash the flags' shape, not their values.
    flags = [f.split("=")[0] for f in module.ldflags(module.version())]
    digest.update("\n".join(flags).encode())
    digest.update(go_version.encode())
    return digest.hexdigest()[:12]


def module_dir_in_cache(module: GoModule, go: str) -> Path:
    go_version = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    key = _cache_key(module, go_version)
    return paths.cache_dir() / "tools" / f"{module.name}-{module.version()}-{key}"


@dataclass
class Toolbox:
    """Paths of the built binaries, by name."""

    binaries: dict[str, Path]
    manifests: dict[str, Path] = field(default_factory=dict)  # module name -> its manifests

    def __getitem__(self, name: str) -> Path:
        return self.binaries[name]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_built(say: Callable[[str], None] = _say) -> Toolbox:
    """Build whatever is missing from the cache; return where every binary is."""
    go = go_binary()
    lock_path = paths.cache_dir() / "tools" / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache, whichever cluster directory asked for it.
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_built(go, say)


def _ensure_built(go: str, say: Callable[[str], None]) -> Toolbox:
    targets = [(module, module_dir_in_cache(module, go)) for module in MODULES]
    missing = [(m, d) for m, d in targets if not (d / ".complete").exists()]
    if missing:
        names = ", ".join(f"{m.name} {m.version()}" for m, _ in missing)
        say(
            f"Building {len(missing)} of {len(targets)} Go modules ({names}) into "
            f"{paths.cache_dir() / 'tools'}.\nA cold build takes about {COLD_BUILD_MINUTES} "
            "minutes on 2 cores; later runs reuse the cache."
        )
        for index, (module, directory) in enumerate(missing, start=1):
            _build(go, module, directory, f"[{index}/{len(missing)}]", say)
    binaries: dict[str, Path] = {}
    for module, directory in targets:
        for binary in module.binaries:
            binaries[binary] = directory / binary
    manifests = {m.name: d / "manifests" for m, d in targets if m.manifests}
    return Toolbox(binaries, manifests)


def _build(go: str, module: GoModule, target: Path, step: str, say: Callable[[str], None]) -> None:
    version = module.version()
    names = ", ".join(module.binaries)
    say(f"{step} {module.name} {version}: building {names}")
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log = target.with_name(target.name + ".build.log")
    env = dict(os.environ, CGO_ENABLED="1" if module.cgo else "0")
    started = time.monotonic()
    ldflags = " ".join(["-s", "-w", *module.ldflags(version)])
    tags = ["-tags", ",".join(module.tags)] if module.tags else []
    with log.open("w") as log_file:
        for binary, package in module.binaries.items():
            command = [
                go,
                "build",
                "-v",
                "-trimpath",
                "-buildvcs=false",
                *tags,
                "-ldflags",
                ldflags,
                "-o",
                str(staging / binary),
                package,
            ]
            log_file.write("$ " + " ".join(command) + "\n")
            log_file.flush()
            process = subprocess.Popen(
                command, cwd=module.directory, env=env, stdout=log_file, stderr=log_file
            )
            stop = threading.Event()
            reporter = threading.Thread(
                target=_report_progress,
                args=(process, stop, log, f"{step} {module.name} (at {binary})", started, say),
                daemon=True,
            )
            reporter.start()
            code = process.wait()
            stop.set()
            reporter.join()
            if code != 0:
                shutil.rmtree(staging, ignore_errors=True)
                raise ClusterError(
                    module.name,
                    f"`go build {package}` failed with exit code {code}",
                    log=log,
                    tail=log_tail(log),
                )
        _copy_manifests(go, module, staging / "manifests", env, log_file)
    (staging / ".complete").write_text(f"{module.name} {version}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    say(f"{step} {module.name} {version}: done in {_elapsed(started)}")


def _copy_manifests(go: str, module: GoModule, target: Path, env: dict[str, str], log: Any) -> None:
    """Copy the upstream module's manifests out of the Go module cache, so that starting
    the cluster reads them from the build's folder and never needs the go command."""
    for upstream, inside in module.manifests:
        # The version go.mod pins (downloaded now if this machine has not yet).
        found = subprocess.run(
            [go, "mod", "download", "-json", upstream],
            cwd=module.directory,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        directory = json.loads(found.stdout or "{}").get("Dir") if found.returncode == 0 else None
        source = Path(directory or "/nonexistent") / inside
        if not source.exists():
            log.write(found.stdout + found.stderr)
            raise ClusterError(
                module.name,
                f"{inside} not found in {upstream}: {(found.stderr or found.stdout).strip()[:300]}",
            )
        destination = target / inside
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copyfile(source, destination)
        # The module cache is read-only; the copies need not be.
        for path in [destination, *destination.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


def _report_progress(
    process: subprocess.Popen[bytes],
    stop: threading.Event,
    log: Path,
    label: str,
    started: float,
    say: Callable[[str], None],
) -> None:
    """Every 20 s, say how many packages `go build -v` has compiled so far."""
    while not stop.wait(20):
        if process.poll() is not None:
            return
        try:
            with log.open() as handle:
                compiled = sum(1 for line in handle if not line.startswith(("$", "go: ")))
        except OSError:
            compiled = 0
        say(f"      {label}: {compiled} packages compiled, {_elapsed(started)} so far")


def _elapsed(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 60}m{seconds % 60:02d}s"
