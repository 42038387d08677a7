"""AWS endpoints the e2e suite's pods talk to, emulated in-process: STS and the EKS Pod Identity
agent. They verify tokens against the issuer's published JWKS with pyjwt, never with the
webhook's own code, so a pass is a real check of what the webhook injected."""

from e2e.emulators.credentials import CredentialStore, IssuedCredentials
from e2e.emulators.oidc import OidcProvider
from e2e.emulators.pod_identity_agent import PodIdentityAgentEmulator
from e2e.emulators.server import Call
from e2e.emulators.sts import StsEmulator

__all__ = [
    "Call",
    "CredentialStore",
    "IssuedCredentials",
    "OidcProvider",
    "PodIdentityAgentEmulator",
    "StsEmulator",
]
