"""`make demo`: the single-node cluster with the webhook installed and the walkthrough run,
left running for a person to look at; `make demo-down` removes it.

    python -m e2e.node.demo up     # prints the walkthrough's results and a kubectl line
    python -m e2e.node.demo down

`up` forks a supervisor that owns the node (its processes, the emulators' threads, the
network namespace) and sleeps until `down` sends it SIGTERM; the supervisor then removes
everything exactly as the e2e fixtures do. A supervisor killed outright leaves leftovers that
the next `up` (or any node e2e run) sweeps away.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main"]

STATE = Path(os.environ.get("PIW_DEMO_STATE", "/run/piw-node/demo"))
PID_FILE = STATE / "supervisor.pid"
RESULT_FILE = STATE / "result.json"
LOG_FILE = STATE / "supervisor.log"
UP_TIMEOUT = 900.0
# Your own roles for the emulated STS (see RolesFile); edits apply within a second.
ROLES_FILE = STATE / "roles.json"
# The emulated STS, always here: pods set AWS_ENDPOINT_URL_STS=http://<node IP>:4566.
STS_PORT = 4566


class RolesFile:
    """Roles a person adds to the demo's STS: a JSON object mapping a role ARN to either
    {"namespace": ..., "serviceAccount": ...} (the least-privilege trust policy of the
    walkthrough, for that ServiceAccount) or a trust policy document of its own. The demo's
    own roles stay; a role removed from the file is removed from STS. An unreadable file keeps
    the previous roles and reports why."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._added: set[str] = set()

    def sync(self, sts: Any, provider: Any, trust_policy: Any) -> str | None:
        """Applies the file to `sts.roles` if it changed; returns an error message or None."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            stat = None
        seen = (stat.st_mtime_ns, stat.st_size) if stat else None
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            wanted = self._read(provider, trust_policy) if stat else {}
        except (OSError, ValueError) as e:
            return f"{self.path}: {e}; the previous roles stay"
        for arn in self._added - set(wanted):
            sts.roles.pop(arn, None)
        sts.roles.update(wanted)
        self._added = set(wanted)
        return None

    def _read(self, provider: Any, trust_policy: Any) -> dict[str, dict[str, Any]]:
        doc = json.loads(self.path.read_text() or "{}")
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object of role ARN -> role")
        roles: dict[str, dict[str, Any]] = {}
        for arn, role in doc.items():
            if not (isinstance(role, dict) and str(arn).startswith("arn:aws")):
                raise ValueError(f"{arn!r}: expected a role ARN mapped to an object")
            if "Statement" in role:
                roles[arn] = role
            elif isinstance(role.get("namespace"), str) and isinstance(
                role.get("serviceAccount"), str
            ):
                roles[arn] = trust_policy(provider, role["namespace"], role["serviceAccount"])
            else:
                raise ValueError(f"{arn}: give namespace and serviceAccount, or a trust policy")
        return roles


def _supervise() -> None:
    """In the forked child: bring everything up, report, then wait for SIGTERM."""
    # Imported here: the parent stays light, and nothing starts threads before Node.start.
    from e2e.controlplane import tools_dir
    from e2e.images import build_images
    from e2e.node.cluster import Node
    from e2e.node.issuer import LISTEN_PORT, IssuerSite
    from e2e.node.walkthrough import (
        AGENT_NAMESPACE,
        DEMO_NAMESPACE,
        DEMO_POD,
        NEGATIVE_NAMESPACE,
        apply_demo_objects,
        aws_emulators,
        install_webhook,
        probe_pod,
        trust_policy,
    )

    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    images = build_images()
    # The issuer is a static HTTPS site, as a self-managed cluster's (e2e/node/issuer.py).
    site = IssuerSite(STATE / "issuer", listen_port=LISTEN_PORT)
    node = Node(
        tools_dir(),
        pause_archive=images.pause.archive,
        pause_ref=images.pause.ref,
        log_dir=STATE / "logs",
        issuer=site.issuer,
        service_account_jwks_uri=site.jwks_uri,
    )
    node.start()
    try:
        site.start(node.netns.name)
        site.publish([node.pki.sa_key_file])
        for image in (images.base, images.webhook, images.demo):
            node.import_image(image.archive, image.ref)
        install_webhook(node, images)
        with aws_emulators(node, site, sts_port=STS_PORT) as aws:
            roles = RolesFile(ROLES_FILE)
            if not ROLES_FILE.exists():
                ROLES_FILE.write_text("{}\n")
            apply_demo_objects(node, images, aws)
            reports = {
                f"{ns}/{DEMO_POD}": probe_pod(node, ns, DEMO_POD).__dict__
                for ns in (DEMO_NAMESPACE, NEGATIVE_NAMESPACE, AGENT_NAMESPACE)
            }
            kubectl = node.tools / "kubectl"
            result = {
                "ok": True,
                "reports": reports,
                "kubeconfig": str(node.kubeconfig),
                "netns": str(node.netns.path),
                "kubectl": str(kubectl) if kubectl.exists() else "kubectl",
                "logs": str(node.log_dir),
                "sts": aws.sts.url,
                "roles_file": str(ROLES_FILE),
                "demo_image": images.demo.ref,
                "issuer": site.issuer,
            }
            _write_result(result)
            while not stop:
                error = roles.sync(aws.sts, aws.provider, trust_policy)
                if error:
                    print(f"demo: {error}", flush=True)  # into the supervisor's log
                time.sleep(0.5)
    finally:
        site.stop()
        shutil.rmtree(site.workdir, ignore_errors=True)  # its test CA and the published files
        node.stop()


def _write_result(result: dict[str, Any]) -> None:
    tmp = RESULT_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(RESULT_FILE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def up() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (network namespace, mounts, cgroups)", file=sys.stderr)
        return 2
    if _running_pid() is not None:
        print("a demo is already running; `make demo-down` first", file=sys.stderr)
        return 1
    STATE.mkdir(parents=True, exist_ok=True)
    RESULT_FILE.unlink(missing_ok=True)
    print(f"demo: building images and starting the node (log: {LOG_FILE}) ...", flush=True)
    pid = os.fork()
    if pid == 0:  # the supervisor
        os.setsid()
        fd = os.open(LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            _supervise()
        except BaseException:
            traceback.print_exc()
            _write_result({"ok": False, "error": traceback.format_exc(limit=5)})
            code = 1
        os._exit(code)
    PID_FILE.write_text(str(pid))
    deadline = time.monotonic() + UP_TIMEOUT
    while not RESULT_FILE.exists():
        if not _alive(pid) or time.monotonic() > deadline:
            print(f"demo: the supervisor stopped; see {LOG_FILE}", file=sys.stderr)
            return 1
        time.sleep(1)
    result = json.loads(RESULT_FILE.read_text())
    if not result["ok"]:
        print(f"demo failed:\n{result['error']}\nlog: {LOG_FILE}", file=sys.stderr)
        return 1
    _print_result(result)
    return 0


def _print_result(result: dict[str, Any]) -> None:
    print("\nThe webhook is installed (2 replicas, host network) and the walkthrough ran:\n")
    for where, report in result["reports"].items():
        outcome = report["caller_arn"] or f"{report['error_code']}: {report['error_message']}"
        print(f"  {where}: {outcome}")
        for name in sorted(report["env"]):
            print(f"      {name}={report['env'][name]}")
    print("\nThe cluster keeps running. Look at it (the API server lives in its own network")
    print("namespace, so commands run inside it):\n")
    print(
        f"  KUBECONFIG={result['kubeconfig']} nsenter --net={result['netns']} "
        f"{result['kubectl']} get pods -A"
    )
    print(f"\nSTS (emulated) for your own pods: AWS_ENDPOINT_URL_STS={result['sts']}")
    print(f"Roles it trusts besides the demo's: {result['roles_file']} (the guide says how)")
    print(f"\nComponent logs: {result['logs']}    Remove everything: make demo-down")


def down() -> int:
    pid = _running_pid()
    if pid is None:
        print("demo: nothing running")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 120
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        print("demo: stopped and removed")
    # Whatever a killed supervisor left behind.
    from e2e.node import runs
    from e2e.node.cluster import DEFAULT_STATE_ROOT

    root = Path(os.environ.get("PIW_NODE_STATE_ROOT", DEFAULT_STATE_ROOT))
    runs.sweep_dead_runs(root)
    remove_state()
    return 0


def remove_state() -> None:
    """Everything `up` wrote under STATE: pid, result, the supervisor's log and the node's
    component logs (`up` prints their directory; they are gone with the demo)."""
    PID_FILE.unlink(missing_ok=True)
    RESULT_FILE.unlink(missing_ok=True)
    RESULT_FILE.with_suffix(".tmp").unlink(missing_ok=True)
    LOG_FILE.unlink(missing_ok=True)
    ROLES_FILE.unlink(missing_ok=True)
    shutil.rmtree(STATE / "logs", ignore_errors=True)
    with contextlib.suppress(OSError):
        STATE.rmdir()  # only when nothing else is in it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.node.demo", description=__doc__)
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
