"""Container images for the real node, made here: nothing can be pulled.

One image holds the project's own static programs (``cluster/go/node``: the sandbox's
pause, the agent workload, the cluster DNS) and Debian's static busybox for a shell. It
is written as an OCI image layout (one uncompressed layer, its config, its manifest and an
index naming it) in a tar that ``ctr images import`` reads, under every name the node
uses: the kubelet's sandbox image and the workload image are the same bytes.

The tar is reproducible (fixed times and owners), so its digest changes only when a
program does.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = "localhost/breaker"
TAG = "local"
PAUSE_IMAGE = f"{REPOSITORY}/pause:{TAG}"
WORKLOAD_IMAGE = f"{REPOSITORY}/workload:{TAG}"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "sleep", "nc", "nslookup", "wget", "ip", "ps")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Blob:
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, media_type: str, **extra: object) -> dict[str, object]:
        return {"mediaType": media_type, "digest": self.digest, "size": len(self.data), **extra}


def _add(archive: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    archive.addfile(info, io.BytesIO(data))


def _layer(files: Mapping[str, Path], links: Mapping[str, str]) -> bytes:
    """One filesystem layer: ``files`` (path in the image -> file here), then symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        directories = sorted({str(Path(p).parent) for p in [*files, *links]} - {".", "/"})
        for directory in directories:
            info = tarfile.TarInfo(directory.lstrip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            archive.addfile(info)
        for inside, source in sorted(files.items()):
            _add(archive, inside.lstrip("/"), source.read_bytes(), 0o755)
        for inside, target in sorted(links.items()):
            info = tarfile.TarInfo(inside.lstrip("/"))
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            archive.addfile(info)
    return buffer.getvalue()


def image_layout(
    files: Mapping[str, Path],
    links: Mapping[str, str],
    images: Mapping[str, Sequence[str]],
    out: Path,
) -> dict[str, str]:
    """Write an OCI image layout tar with one layer, shared by ``images`` (name -> its
    entrypoint); return each name's manifest digest."""
    layer = Blob(_layer(files, links))
    blobs = {layer.digest: layer}
    descriptors = []
    digests = {}
    for name, entrypoint in images.items():
        config = Blob(
            json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {
                        "Entrypoint": list(entrypoint),
                        "Env": ["PATH=/bin:/"],
                        "WorkingDir": "/",
                    },
                    "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
                },
                sort_keys=True,
            ).encode()
        )
        manifest = Blob(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "config": config.descriptor(CONFIG),
                    "layers": [layer.descriptor(LAYER)],
                },
                sort_keys=True,
            ).encode()
        )
        blobs |= {config.digest: config, manifest.digest: manifest}
        digests[name] = manifest.digest
        descriptors.append(
            manifest.descriptor(
                MANIFEST,
                annotations={
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            )
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        _add(archive, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        index = {"schemaVersion": 2, "manifests": descriptors}
        _add(archive, "index.json", json.dumps(index, sort_keys=True).encode())
        for digest, blob in sorted(blobs.items()):
            _add(archive, f"blobs/sha256/{digest.split(':')[1]}", blob.data)
    return digests


def node_images(programs: Mapping[str, Path], busybox: Path, out: Path) -> dict[str, str]:
    """The real node's images, one layer for both: the programs at the root, busybox and
    its applets. The sandbox image runs /pause; the workload runs what the pod says, or
    idles."""
    files = {f"/{name}": path for name, path in programs.items()}
    files["/bin/busybox"] = busybox
    links = {f"/bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS}
    images = {PAUSE_IMAGE: ["/pause"], WORKLOAD_IMAGE: ["/agent", "idle"]}
    return image_layout(files, links, images, out)
