"""Which node runs are alive, and removing what a dead one left behind.

A run `ID` owns: the network namespace `piw-node-ID`, the top-level cgroup
`piw-node-ID` in every hierarchy, and `<state root>/ID/`. It holds an exclusive
flock on `/run/piw-node/ID.lock` while it lives, so a run that was SIGKILLed is
recognised by its released lock and a concurrent live run is never touched. The
locks are machine-wide (namespaces and cgroups are too), whatever the state root.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
from pathlib import Path

from e2e.node import cgroups, cleanup, cni
from e2e.node.containerd import ContainerdLayout
from e2e.node.netns import NETNS_DIR, NetNamespace, netns_inode

__all__ = ["NAME_PREFIX", "Run", "sweep_dead_runs"]

NAME_PREFIX = "piw-node-"
LOCK_DIR = Path("/run/piw-node")
# Only names of this shape are ever removed, whatever else the state root holds.
_RUN_ID = re.compile(r"[0-9a-f]{6}")


class Run:
    """Identity and lock of one node run."""

    def __init__(self, state_root: Path, run_id: str | None = None) -> None:
        self.state_root = state_root
        self.id = run_id or secrets.token_hex(3)
        self.name = NAME_PREFIX + self.id  # netns and cgroup name
        self.state_dir = state_root / self.id
        self.containerd = ContainerdLayout(self.state_dir / "containerd")
        self.lock_path = LOCK_DIR / f"{self.id}.lock"
        self._lock_fd: int | None = None

    def try_lock(self) -> bool:
        """Takes the run's lock; False if a live process holds it."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            self.lock_path.unlink(missing_ok=True)
            os.close(fd)

    def remove_everything(self) -> None:
        """Kills the run's processes and removes its mounts, cgroups, namespace, files
        (and the kubelet's links to its container logs, its shims' sockets and libcni's
        cached results). The namespace takes its netfilter rules, bridges and veths with it;
        host-local's leases and the pods' network namespaces are in the state dir.

        Processes are found three ways, because any one of them can miss some: by
        network namespace (daemons, shims, hostNetwork containers), by cgroup (pod
        containers) and by a command line naming the state directory (a shim whose
        namespace is already gone).
        """
        ns = NetNamespace(self.name)
        shim_sockets = self.containerd.shim_sockets()
        cni_cache = cni.leftovers(self.name, self.containerd.task_ids())
        for _ in range(2):  # a dying containerd may still have spawned a shim
            pids = cgroups.pids_in(self.name)
            pids |= cleanup.pids_mentioning(f"{self.state_dir}/")
            if ns.path.exists():
                pids |= cleanup.pids_in_netns(netns_inode(ns.path))
            cleanup.kill_processes(pids)
        cleanup.unmount_under(self.state_dir)
        cgroups.remove(self.name)
        ns.delete()
        leftovers = [*cleanup.container_log_links(self.state_dir), *shim_sockets]
        for link in [*leftovers, *cni_cache]:
            link.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _candidate_ids(state_root: Path) -> set[str]:
    ids = set()
    if NETNS_DIR.is_dir():
        ids |= {p.name[len(NAME_PREFIX) :] for p in NETNS_DIR.glob(NAME_PREFIX + "*")}
    for mountpoint in cgroups.mountpoints():
        ids |= {p.name[len(NAME_PREFIX) :] for p in mountpoint.glob(NAME_PREFIX + "*")}
    if state_root.is_dir():
        ids |= {p.name for p in state_root.iterdir() if p.is_dir()}
    if LOCK_DIR.is_dir():
        ids |= {p.stem for p in LOCK_DIR.glob("*.lock")}
    # libcni's cache outlives a run whose namespace and state dir are already gone.
    ids |= {p.name[len(NAME_PREFIX) :][:6] for p in cni.leftovers(NAME_PREFIX.rstrip("-"))}
    for link in cleanup.container_log_links(state_root):
        ids.add(Path(os.readlink(link)).relative_to(state_root).parts[0])
    return {i for i in ids if _RUN_ID.fullmatch(i)}


def sweep_dead_runs(state_root: Path) -> list[str]:
    """Removes what every dead run left behind; returns their ids."""
    swept = []
    for run_id in sorted(_candidate_ids(state_root)):
        run = Run(state_root, run_id)
        if not run.try_lock():
            continue  # alive
        try:
            run.remove_everything()
            swept.append(run_id)
        finally:
            run.unlock()
    return swept
