"""A real etcd + kube-apiserver on loopback, for end-to-end tests.

No controller-manager or scheduler runs: pods are stored but never scheduled,
namespaces get no `default` ServiceAccount by themselves (see `ensure_namespace`), a
deleted namespace stays Terminating forever (use fresh names) and nothing is
garbage-collected.

    with ControlPlane(tools_dir()) as cp:
        cp.ensure_namespace("demo")
        ...  # cp.kubeconfig, cp.url, cp.issuer, cp.sa_signing_key_path, ...

Processes are stopped by `stop()`, by the context manager, at interpreter exit, and
(Linux) by the kernel if the Python process dies without cleaning up.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import datetime
import functools
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "BUILD_SCRIPT",
    "ControlPlane",
    "ControlPlaneError",
    "ToolsUnavailable",
    "free_port",
    "tools_dir",
]

E2E_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = E2E_DIR / "tools" / "build.sh"
TOOL_NAMES = ("kube-apiserver", "etcd", "helm", "amazon-eks-pod-identity-webhook")
# build.sh's status for "no Go and no prebuilt binaries": callers skip rather than fail.
EXIT_TOOLS_UNAVAILABLE = 3

# RFC 2544 benchmarking range (never a private range a machine may use), as the node's.
DEFAULT_SERVICE_CIDR = "198.19.0.0/16"
DEFAULT_API_AUDIENCES = ("https://kubernetes.default.svc",)


class ControlPlaneError(RuntimeError):
    """etcd or kube-apiserver failed to start, died, or did not become ready."""


class ToolsUnavailable(RuntimeError):
    """The e2e binaries cannot be provided here (no Go and no PIW_* overrides)."""


@functools.cache
def tools_dir() -> Path:
    """Directory with the pinned binaries: $PIW_E2E_TOOLS_DIR, else e2e/tools/build.sh's.

    The first build takes ~10 minutes on 2 cores; later calls reuse the cache.
    """
    env = os.environ.get("PIW_E2E_TOOLS_DIR")
    if env:
        path = Path(env)
    else:
        # stderr streams through so a long first build shows progress.
        proc = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
        )
        if proc.returncode == EXIT_TOOLS_UNAVAILABLE:
            raise ToolsUnavailable(f"{BUILD_SCRIPT} cannot provide the e2e binaries (exit 3)")
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit status {proc.returncode}")
        path = Path(lines[-1])
    missing = [n for n in TOOL_NAMES if not os.access(path / n, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{path} lacks executables: {', '.join(missing)}")
    return path


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1 (racy by nature; callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last {lines} lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if the test process is SIGKILLed, its servers must not linger
    # holding ports. SIGKILL, not SIGTERM: etcd dies at the same moment, and a
    # terminating kube-apiserver then hangs retrying it. (The signal fires when the
    # *thread* that started the child exits.)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


# --- certificates -----------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class _CA:
    """A throwaway CA; EC P-256 keeps generation fast and both Go and Python accept it."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "piw-e2e-ca")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, self.key)

    def issue(
        self,
        cert_path: Path,
        key_path: Path,
        *,
        common_name: str,
        organizations: Sequence[str] = (),
        hosts: Sequence[str] = (),
        client: bool = False,
    ) -> None:
        """Writes a leaf cert + key; `hosts` become DNS/IP SANs of a serving cert."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)


# --- processes ----------------------------------------------------------------------


class _Server:
    """One child process logging to a file (appended across restarts)."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} starting {self.name} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C on pytest must not kill them before teardown
                # stops them in order (apiserver first, then etcd).
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ControlPlaneError(
                f"{self.name} exited with status {self.proc.returncode}\n{_tail(self.log_path)}"
            )

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


_LIVE: set[ControlPlane] = set()


@atexit.register
def _stop_all() -> None:
    for cp in list(_LIVE):
        cp.stop()


class ControlPlane:
    """etcd + kube-apiserver on 127.0.0.1 with generated PKI and an admin kubeconfig.

    Attributes after `start()`:
      url, port, issuer, kubeconfig, ca_file, ca_pem, admin_cert_file, admin_key_file,
      sa_signing_key_path (RSA private key PEM), sa_public_key_path, etcd_url,
      apiserver_log, etcd_log, workdir.

    Authorization is RBAC; the admin client certificate is in system:masters.
    Anonymous requests are allowed (RBAC limits them), and start() binds the
    service-account-issuer-discovery role to system:unauthenticated so the OIDC
    discovery document and JWKS are public, as they are for an EKS cluster.
    """

    def __init__(
        self,
        tools: Path | None = None,
        *,
        workdir: Path | None = None,
        api_audiences: Sequence[str] = DEFAULT_API_AUDIENCES,
        extra_apiserver_args: Sequence[str] = (),
        ready_timeout: float = 90.0,
    ) -> None:
        self.tools = tools if tools is not None else tools_dir()
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="piw-cp-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api_audiences = tuple(api_audiences)
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.ready_timeout = ready_timeout

        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        self.ca_file = pki / "ca.crt"
        self.ca_key_file = pki / "ca.key"
        self.serving_cert_file = pki / "apiserver.crt"
        self.serving_key_file = pki / "apiserver.key"
        self.admin_cert_file = pki / "admin.crt"
        self.admin_key_file = pki / "admin.key"
        self.sa_signing_key_path = pki / "sa.key"
        self.sa_public_key_path = pki / "sa.pub"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.apiserver_log = self.workdir / "kube-apiserver.log"
        self.etcd_log = self.workdir / "etcd.log"

        self.port = 0
        self.url = ""
        self.issuer = ""
        self.etcd_url = ""
        self._etcd: _Server | None = None
        self._apiserver: _Server | None = None
        self._ca: _CA | None = None

    # --- lifecycle ---

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Generates PKI, starts etcd and kube-apiserver, waits for /readyz."""
        _LIVE.add(self)
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfig()
            self._allow_public_oidc_discovery()
        except BaseException as e:
            # Keep the logs of a failed start for inspection.
            self._own_workdir = False
            self.stop()
            e.add_note(f"control plane workdir (logs): {self.workdir}")
            raise

    def stop(self) -> None:
        """Stops both servers (idempotent); removes the workdir if this object made it."""
        if self._apiserver is not None:
            self._apiserver.stop()
        if self._etcd is not None:
            self._etcd.stop()
        _LIVE.discard(self)
        if self._own_workdir and os.environ.get("PIW_E2E_KEEP_WORKDIR") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        """Stops kube-apiserver and starts it again on the same port, etcd and keys."""
        if self._apiserver is None:
            raise ControlPlaneError("restart_apiserver() before start()")
        self._apiserver.stop()
        self._apiserver.start()
        self._wait_ready()

    def stop_apiserver(self) -> None:
        """Stops kube-apiserver only (e.g. to test clients during an outage)."""
        if self._apiserver is not None:
            self._apiserver.stop()

    def start_apiserver(self) -> None:
        """Starts a kube-apiserver stopped by stop_apiserver() and waits until ready."""
        if self._apiserver is None:
            raise ControlPlaneError("start_apiserver() before start()")
        if not self._apiserver.alive():
            self._apiserver.start()
        self._wait_ready()

    # --- setup steps ---

    def _write_pki(self) -> None:
        self._ca = _CA(self.ca_file, self.ca_key_file)
        service_ip = str(next(ipaddress.ip_network(DEFAULT_SERVICE_CIDR).hosts()))
        self._ca.issue(
            self.serving_cert_file,
            self.serving_key_file,
            common_name="kube-apiserver",
            hosts=[
                "127.0.0.1",
                "localhost",
                service_ip,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        self._ca.issue(
            self.admin_cert_file,
            self.admin_key_file,
            common_name="admin",
            organizations=["system:masters"],
            client=True,
        )
        # Service-account tokens are RS256, like EKS's; the webhook's JWKS tests rely on it.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(self.sa_signing_key_path, sa_key)
        self.sa_public_key_path.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def issue_serving_cert(self, name: str, hosts: Sequence[str]) -> tuple[Path, Path]:
        """A serving cert (cert, key) for e.g. a webhook, signed by the cluster CA
        (so `ca_pem` is the caBundle to register)."""
        if self._ca is None:
            raise ControlPlaneError("issue_serving_cert() before start()")
        out = self.workdir / "pki"
        cert, key = out / f"{name}.crt", out / f"{name}.key"
        self._ca.issue(cert, key, common_name=name, hosts=hosts)
        return cert, key

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def _start_etcd(self) -> None:
        etcd_bin = str(self.tools / "etcd")
        for attempt in range(3):
            client, peer = free_port(), free_port()
            data = self.workdir / "etcd-data"
            shutil.rmtree(data, ignore_errors=True)
            self.etcd_url = f"http://127.0.0.1:{client}"
            peer_url = f"http://127.0.0.1:{peer}"
            self._etcd = _Server(
                "etcd",
                [
                    etcd_bin,
                    "--name=piw",
                    f"--data-dir={data}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer_url}",
                    f"--initial-advertise-peer-urls={peer_url}",
                    f"--initial-cluster=piw={peer_url}",
                    "--initial-cluster-state=new",
                    # Test data is disposable: skip fsync, it dominates etcd latency.
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
                self.etcd_log,
            )
            self._etcd.start()
            try:
                self._wait(self._etcd, self._etcd_healthy, 30.0, "etcd /health")
                return
            except ControlPlaneError:
                self._etcd.stop()
                if attempt == 2 or "address already in use" not in _tail(self.etcd_log):
                    raise

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
            return bool(json.load(resp).get("health") == "true")

    def _apiserver_args(self) -> list[str]:
        return [
            str(self.tools / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.serving_cert_file}",
            f"--tls-private-key-file={self.serving_key_file}",
            f"--client-ca-file={self.ca_file}",
            "--authorization-mode=RBAC",
            # Needed for the public OIDC discovery endpoints; RBAC still gates the rest.
            "--anonymous-auth=true",
            f"--service-account-issuer={self.issuer}",
            f"--service-account-key-file={self.sa_public_key_path}",
            f"--service-account-signing-key-file={self.sa_signing_key_path}",
            f"--api-audiences={','.join((self.issuer, *self.api_audiences))}",
            f"--service-cluster-ip-range={DEFAULT_SERVICE_CIDR}",
            # The default "lease" reconciler keeps failing to publish 127.0.0.1 as the
            # `kubernetes` Service endpoint (loopback is invalid there): pure log noise.
            "--endpoint-reconciler-type=none",
            # Defaults already include these; listed because the tests depend on them.
            "--enable-admission-plugins=ServiceAccount,MutatingAdmissionWebhook,"
            "ValidatingAdmissionWebhook",
            "--allow-privileged=true",
            "--profiling=false",
            # Certificates live in the workdir; nothing may be written to /var/run.
            f"--cert-dir={self.workdir / 'pki'}",
            *self.extra_apiserver_args,
        ]

    def _start_apiserver(self) -> None:
        for attempt in range(3):
            self.port = free_port()
            self.url = f"https://127.0.0.1:{self.port}"
            self.issuer = self.url
            self._apiserver = _Server("kube-apiserver", self._apiserver_args(), self.apiserver_log)
            self._apiserver.start()
            try:
                self._wait_ready()
                return
            except ControlPlaneError:
                self._apiserver.stop()
                if attempt == 2 or "address already in use" not in _tail(self.apiserver_log):
                    raise

    def _wait_ready(self) -> None:
        assert self._apiserver is not None
        self._wait(self._apiserver, self._apiserver_ready, self.ready_timeout, "/readyz")

    def _apiserver_ready(self) -> bool:
        status, _ = self.request("GET", "/readyz", timeout=3)
        return status == 200

    def _wait(self, server: _Server, probe: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            server.check_alive()
            try:
                if probe():
                    return
            except (OSError, ValueError) as e:  # refused, TLS not up yet, bad JSON
                last = repr(e)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{server.name}: {what} not ready after {timeout:.0f}s (last error: {last})\n"
            + _tail(server.log_path)
        )

    def _write_kubeconfig(self) -> None:
        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        # JSON is valid YAML: kubectl, helm, client-go and the Python client all read it.
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "e2e",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": b64(self.ca_file),
                    },
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64(self.admin_cert_file),
                        "client-key-data": b64(self.admin_key_file),
                    },
                }
            ],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
            "current-context": "e2e",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _allow_public_oidc_discovery(self) -> None:
        self.apply(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "piw-e2e:service-account-issuer-discovery-public"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:service-account-issuer-discovery",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Group",
                        "name": "system:unauthenticated",
                    }
                ],
            },
        )

    # --- HTTP helpers (stdlib only, so fixtures need no client library) ---

    @functools.cached_property
    def _admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.admin_cert_file), str(self.admin_key_file))
        return ctx

    @functools.cached_property
    def _anonymous_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        anonymous: bool = False,
        timeout: float = 10.0,
    ) -> tuple[int, bytes]:
        """(status, body) of one API request as admin (or anonymously); no raise on 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = self._anonymous_ssl if anonymous else self._admin_ssl
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as e:
            return int(e.code), bytes(e.read())

    def get_json(self, path: str, *, anonymous: bool = False) -> Any:
        """GET `path` and decode JSON; raises ControlPlaneError on a non-200."""
        status, body = self.request("GET", path, anonymous=anonymous)
        if status != 200:
            raise ControlPlaneError(f"GET {path}: HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def apply(self, collection_path: str, obj: dict[str, Any]) -> None:
        """Creates `obj` under `collection_path`; an existing object is left as it is."""
        status, body = self.request("POST", collection_path, obj)
        if status not in (200, 201, 409):
            raise ControlPlaneError(f"POST {collection_path}: HTTP {status}: {body[:500]!r}")

    def ensure_namespace(self, name: str) -> None:
        """Creates namespace `name` and its `default` ServiceAccount.

        Without kube-controller-manager nobody creates `default`, and the ServiceAccount
        admission plugin rejects pods that (implicitly) use it.
        """
        self.apply(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )
        self.ensure_service_account(name, "default")

    def ensure_service_account(
        self, namespace: str, name: str, annotations: dict[str, str] | None = None
    ) -> None:
        """Creates a ServiceAccount (with `annotations`) unless it exists."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = dict(annotations)
        self.apply(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        )

    def __repr__(self) -> str:
        return f"ControlPlane(url={self.url!r}, workdir={str(self.workdir)!r})"
