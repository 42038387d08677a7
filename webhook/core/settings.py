"""Identity settings that come from flags: immutable, built once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_ANNOTATION_PREFIX = "eks.amazonaws.com"
DEFAULT_TOKEN_AUDIENCE = "sts.amazonaws.com"
DEFAULT_TOKEN_MOUNT_PATH = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
DEFAULT_TOKEN_EXPIRATION = 86400
MIN_TOKEN_EXPIRATION = 600  # the API server refuses projected tokens shorter than 10 minutes
MAX_TOKEN_EXPIRATION = 2**32  # ... and longer than 2^32 seconds (expirationSeconds validation)
JITTER_MIN_TOKEN_EXPIRATION = 79200
WEB_IDENTITY_VOLUME_NAME = "aws-iam-token"
WEB_IDENTITY_TOKEN_PATH = "token"
POD_IDENTITY_LABEL = "eks.amazonaws.com/pod-identity"
CONFIG_MAP_NAME = "pod-identity-webhook"


def clamp_expiration(seconds: int) -> int:
    """Every expiration, from any source, is brought into the range the API server accepts."""
    return min(max(seconds, MIN_TOKEN_EXPIRATION), MAX_TOKEN_EXPIRATION)


def expiration_warning(origin: str, requested: int) -> str | None:
    """What to tell the user when `requested` seconds (from `origin`) had to be lowered."""
    if requested <= MAX_TOKEN_EXPIRATION:
        return None
    return (
        f"{origin} asks for a token expiration of {requested} seconds, above the "
        f"{MAX_TOKEN_EXPIRATION} (2^32) the API server accepts; {MAX_TOKEN_EXPIRATION} is used"
    )


@dataclass(frozen=True, slots=True)
class ContainerCredentialsSettings:
    """EKS Pod Identity ("container credentials") mode; upstream's flag defaults."""

    audience: str = "pods.eks.amazonaws.com"
    mount_path: str = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
    volume_name: str = "eks-pod-identity-token"
    token_path: str = "eks-pod-identity-token"
    full_uri: str = "http://169.254.170.23/v1/credentials"


@dataclass(frozen=True, slots=True)
class RoleArnComposition:
    """`--compose-role-arn`: a bare role name becomes arn:<partition>:iam::<account>:role/<name>."""

    account_id: str
    partition: str = "aws"

    def compose(self, role: str) -> str:
        if "arn:" in role:  # upstream's test: anything that looks like an ARN is kept as is
            return role
        return f"arn:{self.partition}:iam::{self.account_id}:role/{role}"


@dataclass(frozen=True, slots=True)
class MutationSettings:
    annotation_prefix: str = DEFAULT_ANNOTATION_PREFIX
    token_audience: str = DEFAULT_TOKEN_AUDIENCE
    token_mount_path: str = DEFAULT_TOKEN_MOUNT_PATH
    token_expiration: int = DEFAULT_TOKEN_EXPIRATION
    aws_default_region: str = ""
    sts_regional_endpoint: bool = False
    compose_role_arn: RoleArnComposition | None = None
    container_credentials: ContainerCredentialsSettings = field(
        default_factory=ContainerCredentialsSettings
    )
    # Annotation keys, derived once from the prefix instead of on every request.
    role_arn_key: str = field(init=False)
    audience_key: str = field(init=False)
    sts_regional_key: str = field(init=False)
    token_expiration_key: str = field(init=False)
    skip_containers_key: str = field(init=False)

    def __post_init__(self) -> None:
        prefix = self.annotation_prefix + "/"
        object.__setattr__(self, "token_expiration", clamp_expiration(self.token_expiration))
        object.__setattr__(self, "role_arn_key", prefix + "role-arn")
        object.__setattr__(self, "audience_key", prefix + "audience")
        object.__setattr__(self, "sts_regional_key", prefix + "sts-regional-endpoints")
        object.__setattr__(self, "token_expiration_key", prefix + "token-expiration")
        object.__setattr__(self, "skip_containers_key", prefix + "skip-containers")

    @property
    def annotation_key_prefix(self) -> str:
        return self.annotation_prefix + "/"
