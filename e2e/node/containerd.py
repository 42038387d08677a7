"""containerd (Debian's package) with a root, state and socket of its own.

The system's /var/lib/containerd and /run/containerd/containerd.sock are never used,
so a containerd the machine may run is not disturbed and cannot interfere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from e2e.node import cni

__all__ = [
    "ContainerdLayout",
    "ensure_installed",
    "image_refs",
    "import_image",
    "write_config",
]

_SHIM_SOCKET_DIR = Path("/run/containerd/s")
# A command (or an absolute path) and the Debian package providing it.
_PACKAGES = {"containerd": "containerd", "runc": "runc", "ctr": "containerd", **cni.PACKAGES}


def _present(command: str) -> bool:
    if command.startswith("/"):
        return os.access(command, os.X_OK)
    return shutil.which(command) is not None


def ensure_installed() -> None:
    """Installs containerd, runc, the CNI plugins and iptables from Debian if missing (CI may
    be a fresh machine).

    Must run before the test process enters the node's network namespace: apt needs
    the network, and nothing routes out of that namespace.
    """
    missing = sorted({pkg for cmd, pkg in _PACKAGES.items() if not _present(cmd)})
    if not missing:
        return
    # Wait for a concurrent apt (another suite installing its own tools) to finish.
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    install = ["apt-get", *lock_wait, "install", "-y", "--no-install-recommends", *missing]
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", *lock_wait, "update"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)


class ContainerdLayout:
    """Paths of one containerd instance under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config = directory / "config.toml"
        self.root = directory / "root"
        self.state = directory / "state"
        self.socket = directory / "containerd.sock"
        self.runc_root = directory / "runc"
        self.cni_conf_dir = directory / "cni" / "net.d"
        self.cni_ipam_dir = directory / "cni" / "ipam"  # host-local's leases
        self.snapshotter = "overlayfs"  # write_config() falls back to "native"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def task_ids(self) -> set[str]:
        """Ids of the containers and pod sandboxes this instance ran (their bundle dirs)."""
        bundles = self.state / "io.containerd.runtime.v2.task" / "k8s.io"
        return {p.name for p in bundles.iterdir()} if bundles.is_dir() else set()

    def shim_sockets(self) -> set[Path]:
        """The sockets of this instance's shims. containerd 1.6 puts them in
        /run/containerd/s whatever its own state dir, and a SIGKILLed shim leaves its
        socket there; each task's bundle records the address."""
        bundles = self.state / "io.containerd.runtime.v2.task"
        sockets = set()
        for address in bundles.glob("*/*/address"):
            path = Path(address.read_text().strip().removeprefix("unix://"))
            if path.parent == _SHIM_SOCKET_DIR:
                sockets.add(path)
        return sockets


def _overlay_works(probe_dir: Path) -> bool:
    """Whether an overlay mount works on the filesystem holding `probe_dir`."""
    probe_dir.mkdir(parents=True, exist_ok=True)
    dirs = {n: probe_dir / n for n in ("lower", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir(exist_ok=True)
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs["merged"])],
        capture_output=True,
        check=False,
    )
    if mounted.returncode == 0:
        subprocess.run(["umount", str(dirs["merged"])], check=False)
    shutil.rmtree(probe_dir, ignore_errors=True)
    return mounted.returncode == 0


def write_config(
    layout: ContainerdLayout, *, sandbox_image: str, network: Mapping[str, Any]
) -> str:
    """Writes config.toml and the CNI conflist `network` (cni.network_config); returns the
    snapshotter chosen."""
    for d in (layout.root, layout.state, layout.runc_root, layout.cni_conf_dir):
        d.mkdir(parents=True, exist_ok=True)
    (layout.cni_conf_dir / "10-piw.conflist").write_text(json.dumps(network, indent=2))
    snapshotter = "overlayfs" if _overlay_works(layout.directory / "overlay-probe") else "native"
    layout.snapshotter = snapshotter
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    runc = f"{cri}.containerd.runtimes.runc"
    layout.config.write_text(
        f"""\
version = 2
root = "{layout.root}"
state = "{layout.state}"

[grpc]
  address = "{layout.socket}"
[ttrpc]
  address = "{layout.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.directory / "opt"}"

[{cri}]
  sandbox_image = "{sandbox_image}"
  # The test process lacks CAP_SYS_RESOURCE: runc could not lower the sandbox's
  # oom_score_adj below our own, and every pod sandbox would fail to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  # Pods' network namespaces under the state dir, not /var/run/netns: a killed run's are
  # unmounted and removed with the rest of its state.
  netns_mounts_under_state_dir = true
[{cri}.containerd]
  snapshotter = "{snapshotter}"
  default_runtime_name = "runc"
[{runc}]
  runtime_type = "io.containerd.runc.v2"
[{runc}.options]
  SystemdCgroup = false
  Root = "{layout.runc_root}"
[{cri}.cni]
  bin_dir = "{cni.BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
"""
    )
    return snapshotter


def _ctr(layout: ContainerdLayout, *args: str) -> str:
    proc = subprocess.run(
        ["ctr", f"--address={layout.socket}", "--namespace=k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def image_refs(layout: ContainerdLayout) -> set[str]:
    """Image names in the CRI's (`k8s.io`) namespace."""
    return set(_ctr(layout, "images", "ls", "--quiet").split())


def import_image(layout: ContainerdLayout, archive: Path, ref: str | None = None) -> set[str]:
    """Imports a docker-archive/OCI tarball; returns the names it added or re-tagged.

    With `ref`, checks that this exact name is now known to the runtime (the CRI
    looks images up by their fully qualified name, and pods use imagePullPolicy Never).
    """
    before = image_refs(layout)
    output = _ctr(layout, "images", "import", f"--snapshotter={layout.snapshotter}", str(archive))
    after = image_refs(layout)
    named = {line.split()[1] for line in output.splitlines() if line.startswith("unpacking ")} | (
        after - before
    )
    named = {n for n in named if not n.startswith("sha256:")}
    if ref is not None and ref not in after:
        raise RuntimeError(f"{archive} did not provide image {ref}; runtime has {sorted(after)}")
    return named
