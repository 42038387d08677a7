"""Temporary credentials the emulators hand out, remembered so signed calls can be checked.

An STS emulator and a Pod Identity agent emulator may share one store: credentials a pod got from
the agent then sign a GetCallerIdentity the STS emulator answers, as with real AWS.
"""

from __future__ import annotations

import base64
import secrets
import string
import threading
import time
from dataclasses import dataclass

_KEY_ALPHABET = string.ascii_uppercase + "234567"


@dataclass(frozen=True)
class IssuedCredentials:
    access_key_id: str  # ASIA... like every temporary key
    secret_access_key: str
    session_token: str
    expiration: float  # Unix time
    account_id: str
    role_name: str
    session_name: str
    role_id: str  # AROA...: the unique ID of the role

    @property
    def arn(self) -> str:
        return f"arn:aws:sts::{self.account_id}:assumed-role/{self.role_name}/{self.session_name}"

    @property
    def assumed_role_id(self) -> str:
        return f"{self.role_id}:{self.session_name}"

    @property
    def expiration_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expiration))


def _key_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


class CredentialStore:
    """Thread-safe: issue() from request threads, lookup() when verifying signatures."""

    def __init__(self) -> None:
        self._by_key: dict[str, IssuedCredentials] = {}
        self._role_ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def issue(
        self, *, account_id: str, role_name: str, session_name: str, duration_seconds: int
    ) -> IssuedCredentials:
        with self._lock:
            role_id = self._role_ids.setdefault(f"{account_id}/{role_name}", _key_id("AROA"))
            credentials = IssuedCredentials(
                access_key_id=_key_id("ASIA"),
                secret_access_key=base64.b64encode(secrets.token_bytes(30)).decode(),
                session_token=base64.b64encode(secrets.token_bytes(96)).decode(),
                expiration=time.time() + duration_seconds,
                account_id=account_id,
                role_name=role_name,
                session_name=session_name,
                role_id=role_id,
            )
            self._by_key[credentials.access_key_id] = credentials
        return credentials

    def lookup(self, access_key_id: str) -> IssuedCredentials | None:
        with self._lock:
            return self._by_key.get(access_key_id)
