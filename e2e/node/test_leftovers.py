"""A killed run leaves processes, mounts, cgroups and a namespace behind; the next run's
sweep removes all of them, and never touches a run that is still alive."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.node import cgroups, cleanup, cni, containerd
from e2e.node.netns import NetNamespace
from e2e.node.runs import Run, sweep_dead_runs

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SHIM_SOCKETS = Path("/run/containerd/s")


@pytest.fixture
def state_root(tmp_path: Path) -> Path:
    containerd.ensure_installed()  # iptables, as a node run has it
    return tmp_path / "state"


def _leave_behind(run: Run) -> list[subprocess.Popen[bytes]]:
    """What a SIGKILLed run leaves: a process in its namespace, one in its cgroup, one
    naming its state dir, a tmpfs mount, a cgroup tree, the namespace itself (with a pod's
    veth, bridge and netfilter rules in it), a kubelet log link, a shim socket and libcni's
    cached result outside the state dir, and host-local's leases inside it."""
    run.state_dir.mkdir(parents=True)
    ns = NetNamespace.create(run.name, ["192.0.2.10"])
    # A pod's network namespace as containerd keeps it (a bind mount under the state dir), its
    # veth into a bridge of the node's namespace, and a netfilter rule there.
    pod_netns = run.containerd.state / "netns" / "cni-0123abcd"
    pod_netns.parent.mkdir(parents=True)
    pod_netns.touch()
    subprocess.run(["unshare", f"--net={pod_netns}", "true"], check=True)
    node_side = [*ns.nsenter(), "sh", "-ec"]
    subprocess.run(
        [*node_side, f"ip link add {cni.BRIDGE} type bridge; "
         f"ip link add vethpiw0 type veth peer name eth0 netns {pod_netns}; "
         f"ip link set vethpiw0 master {cni.BRIDGE}; "
         "iptables -t nat -N KUBE-SERVICES; iptables -t nat -A OUTPUT -j KUBE-SERVICES"],
        check=True,
    )  # fmt: skip
    cgroups.create(run.name)
    pod_cgroup = cgroups.mountpoints()[0] / run.name / "kubepods" / "pod1"
    pod_cgroup.mkdir(parents=True)
    # mountinfo escapes the space (as \040): the sweep must still find this one.
    volume = run.state_dir / "kubelet" / "pods" / "uid" / "volumes" / "a token"
    volume.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(volume)], check=True)
    in_ns = subprocess.Popen([*ns.nsenter(), "sleep", "300"], start_new_session=True)
    in_cgroup = subprocess.Popen(["sleep", "300"], start_new_session=True)
    (pod_cgroup / "cgroup.procs").write_text(str(in_cgroup.pid))
    shim = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", f"{run.state_dir}/shim.sock"],
        start_new_session=True,
    )
    log = run.state_dir / "pod-logs" / "ns_pod_uid" / "main" / "0.log"
    log.parent.mkdir(parents=True)
    log.touch()
    cleanup.CONTAINER_LOG_LINKS.mkdir(parents=True, exist_ok=True)
    (cleanup.CONTAINER_LOG_LINKS / f"pod_ns_main-{run.id}.log").symlink_to(log)
    bundle = run.containerd.state / "io.containerd.runtime.v2.task" / "k8s.io" / "sandbox"
    bundle.mkdir(parents=True)
    socket = SHIM_SOCKETS / f"piw-test-{run.id}"
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.touch()
    (bundle / "address").write_text(f"unix://{socket}")
    cni.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (cni.RESULTS_DIR / f"{run.name}-0123abcd-eth0").write_text("{}")
    (cni.RESULTS_DIR / "cni-loopback-sandbox-lo").write_text("{}")  # the bundle's id above
    lease = run.containerd.cni_ipam_dir / run.name / "198.18.0.2"
    lease.parent.mkdir(parents=True)
    lease.write_text("0123abcd\neth0")
    return [in_ns, in_cgroup, shim]


@pytest.fixture
def dead_run(state_root: Path) -> Iterator[tuple[Run, list[subprocess.Popen[bytes]]]]:
    run = Run(state_root)
    procs = _leave_behind(run)
    yield run, procs
    for proc in procs:
        proc.kill()
        proc.wait()
    run.try_lock()
    run.remove_everything()
    run.unlock()


def test_the_sweep_removes_everything_a_dead_run_left(
    state_root: Path, dead_run: tuple[Run, list[subprocess.Popen[bytes]]]
) -> None:
    run, procs = dead_run
    assert sweep_dead_runs(state_root) == [run.id]
    # Killed and reaped (the sweep reaps its own children, as these are here).
    assert [p.pid for p in procs if Path(f"/proc/{p.pid}").exists()] == []
    assert cleanup.mountpoints_under(run.state_dir) == []
    assert not run.state_dir.exists()
    assert [mp for mp in cgroups.mountpoints() if (mp / run.name).exists()] == []
    assert not NetNamespace(run.name).path.exists()
    assert cleanup.container_log_links(run.state_dir) == []
    assert not (SHIM_SOCKETS / f"piw-test-{run.id}").exists()
    assert cni.leftovers(run.name) == []
    assert not (cni.RESULTS_DIR / "cni-loopback-sandbox-lo").exists()


def test_a_run_known_only_by_its_cni_cache_is_swept(state_root: Path) -> None:
    run = Run(state_root)
    cached = cni.RESULTS_DIR / f"{run.name}-0123abcd-eth0"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text("{}")
    try:
        assert sweep_dead_runs(state_root) == [run.id]
        assert not cached.exists()
    finally:
        cached.unlink(missing_ok=True)


def test_the_sweep_leaves_a_live_run_alone(
    state_root: Path, dead_run: tuple[Run, list[subprocess.Popen[bytes]]]
) -> None:
    run, procs = dead_run
    live = Run(state_root, run.id)
    assert live.try_lock()
    try:
        assert sweep_dead_runs(state_root) == []
        assert [p.poll() for p in procs] == [None, None, None]
        assert NetNamespace(run.name).path.exists()
    finally:
        live.unlock()


def test_other_directories_under_the_state_root_are_not_runs(state_root: Path) -> None:
    (state_root / "logs" / "abc123").mkdir(parents=True)
    (state_root / "not-a-run").mkdir()
    assert sweep_dead_runs(state_root) == []
    assert sorted(p.name for p in state_root.iterdir()) == ["logs", "not-a-run"]
