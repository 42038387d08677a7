"""An external service-account issuer, as self-managed clusters (EKS Anywhere, kOps, kubeadm)
run one: static files on an HTTPS site (an S3 bucket, often behind CloudFront), not the API server.

    site = IssuerSite(workdir)                           # test CA, serving cert for the host
    node = Node(..., issuer=site.issuer, service_account_jwks_uri=site.jwks_uri)
    node.start()
    site.start(node)                                     # 192.0.2.20:443 inside the node's netns
    site.publish([node.pki.sa_pub_file])                 # `oidc keys` + `oidc discovery`
    ...                                                  # STS emulator: OidcProvider(site.issuer,
    site.stop()                                          #   ..., site.client_context(), site.hosts)

The documents are made by the project's own `pod-identity-webhook oidc keys` and `oidc discovery`
from the signing key files, exactly as a user publishes them. The host name resolves only inside
the test: the emulators get `hosts` (their /etc/hosts), and toolkit commands run by `toolkit()`
see a private /etc/hosts (a mount namespace of their own) naming it, and the test CA through
SSL_CERT_FILE, as they would a public CA.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from e2e.controlplane import _CA
from e2e.emulators.server import serve_in_background, shut_down
from e2e.node.netns import BRIDGE, NETNS_DIR

__all__ = [
    "ISSUER_HOST",
    "ISSUER_IP",
    "ISSUER_URL",
    "IssuerSite",
    "Published",
    "ServedRequest",
]

ISSUER_HOST = "oidc.piw-node.example"  # .example: never resolvable outside this test
ISSUER_IP = "192.0.2.20"  # TEST-NET-1, on the node's bridge next to the node IP
# A path under the host, as a bucket's or CloudFront's (and EKS's /id/<ID>) issuers have.
ISSUER_PATH = "/piw-node"
ISSUER_URL = f"https://{ISSUER_HOST}{ISSUER_PATH}"
# kube-apiserver listens on 0.0.0.0:443 in the node's namespace (and hostNetwork webhook pods
# on other ports), so the site listens on an ephemeral port and a DNAT rule maps ISSUER_IP:443
# to it, as a load balancer in front of the bucket would.
LISTEN_PORT = 0
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_NAME = "keys.json"


@dataclass(frozen=True)
class ServedRequest:
    path: str
    client: str
    status: int


@dataclass(frozen=True)
class Published:
    """What `publish` put on the site: the key IDs in keys.json and the two documents."""

    kids: tuple[str, ...]
    discovery: Path
    jwks: Path


class IssuerSite:
    """Static HTTPS files at `issuer`: `<issuer>/.well-known/openid-configuration` and
    `<issuer>/keys.json`. TLS from a CA of its own (not the cluster's), as a public site's."""

    def __init__(
        self,
        workdir: Path,
        *,
        host: str = ISSUER_HOST,
        path: str = ISSUER_PATH,
        address: str = ISSUER_IP,
        port: int = 443,
        listen_port: int | None = None,
    ) -> None:
        self.host = host
        self.address = address
        # `port` is the one in the URL; the site listens on `listen_port` (default: the same)
        # and start() maps one to the other when they differ.
        self.listen_port = port if listen_port is None else listen_port
        self.port = port
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.ca_file = workdir / "issuer-ca.crt"
        self._cert = workdir / "issuer-site.crt"
        self._key = workdir / "issuer-site.key"
        ca = _CA(self.ca_file, workdir / "issuer-ca.key")
        ca.issue(self._cert, self._key, common_name=self.host, hosts=[self.host])
        self.root = workdir / "site"  # the bucket's contents
        self._prefix = path.rstrip("/")
        self.hosts_file = workdir / "hosts"
        self.requests: list[ServedRequest] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def issuer(self) -> str:
        """https://HOST/PATH (with the port unless 443: known once started for port 0)."""
        port = "" if self.port == 443 else f":{self.port}"
        return f"https://{self.host}{port}{self._prefix}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/{JWKS_NAME}"

    @property
    def hosts(self) -> dict[str, str]:
        """The name -> address entry a resolver inside the node would have."""
        return {self.host: self.address}

    def client_context(self) -> ssl.SSLContext:
        """TLS that trusts the site's CA, as IAM trusts a public issuer's."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    # --- serving ----------------------------------------------------------------------------

    def start(self, netns_name: str | None = None) -> None:
        """Serves on address:listen_port. With `netns_name`, first puts the address on the
        node's bridge and maps address:port to the listening port (the caller's process is
        inside that namespace)."""
        if netns_name is not None:
            _run("ip", "-n", netns_name, "addr", "add", f"{self.address}/32", "dev", BRIDGE)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(self._cert, self._key)
        httpd = ThreadingHTTPServer((self.address, self.listen_port), _handler(self))
        httpd.daemon_threads = True
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        bound = httpd.server_address[1]
        if self.port in (0, self.listen_port):
            self.port = bound
        elif netns_name is not None:
            # Connections from this namespace's own processes (the emulators, the toolkit).
            _run("nsenter", f"--net={NETNS_DIR / netns_name}", "iptables", "-w", "-t", "nat",
                 "-A", "OUTPUT", "-p", "tcp", "-d", self.address, "--dport", str(self.port),
                 "-j", "DNAT", "--to-destination", f"{self.address}:{bound}")  # fmt: skip
        else:
            httpd.server_close()
            raise ValueError(f"port {self.port} != listen port {bound} needs the node namespace")
        self.listen_port = bound
        self.hosts_file.write_text(f"127.0.0.1 localhost\n{self.address} {self.host}\n")
        self._httpd = httpd
        self._thread = serve_in_background(httpd, f"issuer-site:{self.port}")

    def stop(self) -> None:
        if self._httpd is not None and self._thread is not None:
            shut_down(self._httpd, self._thread)
        self._httpd = self._thread = None

    def record(self, request: ServedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def served(self) -> list[ServedRequest]:
        with self._lock:
            return list(self.requests)

    def file_for(self, url_path: str) -> Path | None:
        """The file a GET of `url_path` serves, or None (404). Only under the issuer's path."""
        path = unquote(url_path.split("?", 1)[0])
        if not path.startswith(self._prefix + "/"):
            return None
        relative = path.removeprefix(self._prefix + "/")
        candidate = (self.root / relative).resolve()
        root = self.root.resolve()
        if root not in candidate.parents or not candidate.is_file():
            return None
        return candidate

    # --- publishing, with the project's own commands -----------------------------------------

    def publish(self, key_files: Sequence[Path]) -> Published:
        """`oidc keys --public-key F ...` as keys.json and `oidc discovery` as the discovery
        document, from the service-account key files (public or private, as the API server's
        --service-account-key-file / -signing-key-file are). Replaces what was there."""
        keys = [arg for f in key_files for arg in ("--public-key", str(f))]
        jwks = self.toolkit("oidc", "keys", *keys, "-o", "json", isolated=False)
        discovery = self.toolkit(
            "oidc", "discovery", "--issuer", self.issuer, "--jwks-uri", self.jwks_uri,
            *keys, "-o", "json", isolated=False,
        )  # fmt: skip
        for result in (jwks, discovery):
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(result.args)}: {result.stderr}")
        directory = self.root
        directory.mkdir(parents=True, exist_ok=True)
        (directory / ".well-known").mkdir(exist_ok=True)
        discovery_file = directory / ".well-known" / "openid-configuration"
        jwks_file = directory / JWKS_NAME
        # Replace each file in one step, as an upload does: a reader sees old or new, whole.
        for target, text in ((jwks_file, jwks.stdout), (discovery_file, discovery.stdout)):
            tmp = target.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(target)
        kids = tuple(str(k.get("kid", "")) for k in json.loads(jwks.stdout)["keys"])
        return Published(kids, discovery_file, jwks_file)

    def toolkit(
        self, *args: str, isolated: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """`pod-identity-webhook ARGS` as a user on the node runs it. `isolated`: in a mount
        namespace of its own whose /etc/hosts names the site, trusting the site's CA through
        SSL_CERT_FILE (commands that fetch from the issuer URL need both)."""
        argv = [sys.executable, "-m", "webhook", *args]
        env = None
        if isolated:
            env = {**os.environ, "SSL_CERT_FILE": str(self.ca_file)}
            argv = [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts_file),
                *argv,
            ]  # fmt: skip
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )


def _handler(site: IssuerSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            found = site.file_for(self.path)
            if found is None:
                status, body, kind = 404, b"NoSuchKey\n", "text/plain"
            else:
                status, body, kind = 200, found.read_bytes(), "application/json"
            site.record(ServedRequest(self.path, self.client_address[0], status))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=0")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # `site.requests` is the log

    return Handler


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
