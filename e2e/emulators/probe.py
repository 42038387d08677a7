"""A botocore probe: the default credential chain, then GetCallerIdentity, as one JSON line.

`PROBE_SCRIPT` needs only botocore, so it runs unchanged inside a pod's container
(`python3 -c PROBE_SCRIPT` through exec) or, with `run_probe`, in a local subprocess whose
environment holds nothing but what it is given, so no ~/.aws or host variable can help it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROBE_SCRIPT = """
import json, botocore.session
out = {"botocore": botocore.__version__}
try:
    session = botocore.session.get_session()
    credentials = session.get_credentials()
    out["method"] = credentials.method if credentials else None
    out["access_key"] = credentials.get_frozen_credentials().access_key if credentials else None
    out["arn"] = session.create_client("sts").get_caller_identity()["Arn"]
except Exception as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


@dataclass(frozen=True)
class ProbeResult:
    botocore: str  # the version that ran
    method: str | None  # botocore's provider name, e.g. "assume-role-with-web-identity"
    access_key: str | None
    arn: str | None  # GetCallerIdentity's Arn
    error: str | None  # str() of what botocore raised, as a user would read it


def parse_probe(stdout: str) -> ProbeResult:
    """The probe's answer from its output (the last line, in case anything printed before)."""
    answer = json.loads(stdout.strip().splitlines()[-1])
    return ProbeResult(
        botocore=str(answer["botocore"]),
        method=answer.get("method"),
        access_key=answer.get("access_key"),
        arn=answer.get("arn"),
        error=answer.get("error"),
    )


def run_probe(
    env: Mapping[str, str], *, home: Path, python: str = sys.executable, timeout: float = 60
) -> ProbeResult:
    """PROBE_SCRIPT in a subprocess that sees only `env`, plus an empty AWS configuration."""
    isolated = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        **env,
    }
    done = subprocess.run(
        [python, "-c", PROBE_SCRIPT],
        env=isolated,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"botocore probe exited {done.returncode}: {done.stderr.strip()}")
    return parse_probe(done.stdout)
