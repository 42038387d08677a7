"""EC2 instance metadata (IMDSv2) for --compose-role-arn: account id and partition."""

from __future__ import annotations

import json
import urllib.request

IMDS = "http://169.254.169.254"
TIMEOUT_SECONDS = 2.0

_PARTITION_PREFIXES = (
    ("cn-", "aws-cn"),
    ("us-gov-", "aws-us-gov"),
    ("us-isob-", "aws-iso-b"),
    ("us-iso-", "aws-iso"),
    ("eusc-", "aws-eusc"),
)


class InstanceMetadataError(RuntimeError):
    pass


def partition_for_region(region: str) -> str:
    for prefix, partition in _PARTITION_PREFIXES:
        if region.startswith(prefix):
            return partition
    return "aws"


def account_from_instance_metadata(base_url: str = IMDS) -> tuple[str, str]:
    """(account id, partition) from the instance identity document."""
    try:
        token_request = urllib.request.Request(
            f"{base_url}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_request, timeout=TIMEOUT_SECONDS) as response:
            token = response.read().decode()
        document_request = urllib.request.Request(
            f"{base_url}/latest/dynamic/instance-identity/document",
            headers={"X-aws-ec2-metadata-token": token},
        )
        with urllib.request.urlopen(document_request, timeout=TIMEOUT_SECONDS) as response:
            document = json.loads(response.read())
    except (OSError, ValueError) as err:
        raise InstanceMetadataError(
            f"--compose-role-arn: instance metadata unreachable ({err}); "
            "pass --aws-account-id (and --aws-partition) off EC2"
        ) from None
    return str(document["accountId"]), partition_for_region(str(document.get("region", "")))
