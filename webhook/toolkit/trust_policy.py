"""IAM role trust policies for IRSA: generate least-privilege ones, find and lint existing ones.

A pod's token reaches STS AssumeRoleWithWebIdentity; STS then evaluates the role's trust policy
with condition keys named `<issuer host/path>:sub` and `<issuer host/path>:aud` (no https://).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from webhook.toolkit.iam_conditions import (
    POSITIVE_STRING_OPERATORS,
    Clause,
    PolicyError,
    describe_clause,
    evaluate,
    has_wildcard,
    parse_condition,
    string_like,
)
from webhook.toolkit.render import Finding, InputError, Severity

DEFAULT_AUDIENCE = "sts.amazonaws.com"
WEB_IDENTITY_ACTION = "sts:AssumeRoleWithWebIdentity"
SA_SUB_PREFIX = "system:serviceaccount:"

_ACCOUNT_ID = re.compile(r"\d{12}")
_PARTITION = re.compile(r"aws(-[a-z]+)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_OIDC_PROVIDER_ARN = re.compile(r"arn:(aws[a-z-]*):iam::(\d{12}):oidc-provider/(.+)")
_AWS_PRINCIPAL_ACCOUNT = re.compile(r"(?:arn:aws[a-z-]*:(?:iam|sts)::)?(\d{12})(?::.*)?")
_SERVICE_ACCOUNT_SUB = re.compile(r"system:serviceaccount:[^:]+:[^:]+")
# Keys on the issuer's prefix that STS fills from the token.
_OIDC_KEY_SUFFIXES = frozenset({"sub", "aud", "amr", "azp", "email", "oaud"})
# Conditions that confine an `AWS: "*"` principal to a known set of callers.
_CALLER_SCOPING_KEYS = frozenset(
    {
        "sts:externalid",
        "aws:principalorgid",
        "aws:principalaccount",
        "aws:principalarn",
        "aws:sourceaccount",
        "aws:sourcearn",
        "aws:principalorgpaths",
        "aws:sourceorgid",
    }
)


class TrustPolicyInputError(InputError):
    """Bad arguments for generating a trust policy."""


# --- issuers and provider ARNs ---------------------------------------------------------------


def issuer_host_path(issuer: str) -> str:
    """`https://oidc.example.com/id/ABC/` -> `oidc.example.com/id/ABC`: the form IAM uses in
    provider ARNs and condition keys. A bare host/path is accepted as-is."""
    text = issuer.strip()
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme != "https":
            raise TrustPolicyInputError(
                f"issuer {issuer!r} must use https:// (STS only trusts HTTPS issuers)"
            )
        if parts.query or parts.fragment:
            raise TrustPolicyInputError(f"issuer {issuer!r} must not have a query or fragment")
        text = parts.netloc + parts.path
    text = text.rstrip("/")
    if not text or "/" in text.split("/", 1)[0] or any(c.isspace() for c in text):
        raise TrustPolicyInputError(f"issuer {issuer!r} is not a URL")
    return text


@dataclass(frozen=True)
class OidcProvider:
    partition: str
    account: str
    host_path: str

    @property
    def arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:oidc-provider/{self.host_path}"


def parse_provider_arn(arn: str) -> OidcProvider | None:
    """An `oidc-provider` ARN; None for anything else (including a URL in place of host/path)."""
    match = _OIDC_PROVIDER_ARN.fullmatch(arn.strip())
    if not match or "://" in match.group(3):
        return None
    return OidcProvider(match.group(1), match.group(2), match.group(3).rstrip("/"))


def service_account_sub(namespace: str, service_account: str) -> str:
    return f"{SA_SUB_PREFIX}{namespace}:{service_account}"


# --- generate ---------------------------------------------------------------------------------


def generate_trust_policy(
    *,
    issuer: str,
    account_id: str,
    namespace: str,
    service_account: str,
    partition: str = "aws",
    audience: str = DEFAULT_AUDIENCE,
) -> dict[str, object]:
    """The least-privilege trust policy for one service account: exact `sub` and `aud`."""
    if not _ACCOUNT_ID.fullmatch(account_id):
        raise TrustPolicyInputError(f"account id {account_id!r} must be exactly 12 digits")
    if not _PARTITION.fullmatch(partition):
        raise TrustPolicyInputError(
            f"partition {partition!r} is not an AWS partition (aws, aws-cn, aws-us-gov, ...)"
        )
    if len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        raise TrustPolicyInputError(
            f"namespace {namespace!r} is not a valid Kubernetes namespace name"
        )
    if len(service_account) > 253 or not _DNS_SUBDOMAIN.fullmatch(service_account):
        raise TrustPolicyInputError(
            f"service account {service_account!r} is not a valid Kubernetes object name"
        )
    if not audience or any(c.isspace() for c in audience):
        raise TrustPolicyInputError(f"audience {audience!r} must be a non-empty word")
    host_path = issuer_host_path(issuer)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {
                    "Federated": OidcProvider(partition, account_id, host_path).arn,
                },
                "Action": WEB_IDENTITY_ACTION,
                "Condition": {
                    "StringEquals": {
                        f"{host_path}:sub": service_account_sub(namespace, service_account),
                        f"{host_path}:aud": audience,
                    }
                },
            }
        ],
    }


# --- parse ------------------------------------------------------------------------------------


def _strings(value: object, element: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in items):
        raise PolicyError(f"{element} must be a string or a list of strings")
    return tuple(str(v) for v in items)


@dataclass(frozen=True)
class Statement:
    """A policy statement with its one-or-many elements normalized to tuples."""

    index: int
    effect: str
    actions: tuple[str, ...]
    principals: Mapping[str, tuple[str, ...]]  # "*" principal is {"*": ("*",)}
    conditions: tuple[Clause, ...]
    sid: str | None = None
    not_action: bool = False
    not_principal: bool = False

    def allows_action(self, action: str) -> bool:
        """Whether Action (IAM wildcards, case-insensitive) covers `action`."""
        hit = any(string_like(a.lower(), action.lower()) for a in self.actions)
        return hit != self.not_action

    @property
    def is_allow(self) -> bool:
        return self.effect == "Allow"

    def oidc_providers(self) -> list[OidcProvider]:
        found = (parse_provider_arn(p) for p in self.principals.get("Federated", ()))
        return [p for p in found if p is not None]


def _principals(value: object, element: str) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if value == "*":
        return {"*": ("*",)}
    if not isinstance(value, dict):
        raise PolicyError(f'{element} must be "*" or an object like {{"Federated": "..."}}')
    return {str(kind): _strings(ids, f"{element}.{kind}") for kind, ids in value.items()}


def parse_policy(policy: object) -> list[Statement]:
    """Normalized statements; PolicyError when the document is not an IAM policy."""
    if not isinstance(policy, dict):
        raise PolicyError("policy must be a JSON object")
    raw_statements = policy.get("Statement")
    if raw_statements is None:
        raise PolicyError("policy has no Statement")
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list):
        raise PolicyError("Statement must be an object or a list of objects")
    statements = []
    for index, raw in enumerate(raw_statements):
        if not isinstance(raw, dict):
            raise PolicyError(f"Statement {index} is not a JSON object")
        try:
            effect = raw.get("Effect")
            if effect not in ("Allow", "Deny"):
                raise PolicyError(f'Effect must be "Allow" or "Deny", not {effect!r}')
            not_action = "NotAction" in raw and "Action" not in raw
            actions = _strings(raw.get("NotAction" if not_action else "Action", []), "Action")
            not_principal = "NotPrincipal" in raw and "Principal" not in raw
            principal_element = "NotPrincipal" if not_principal else "Principal"
            principals = _principals(raw.get(principal_element), principal_element)
            conditions = tuple(parse_condition(raw.get("Condition")))
        except PolicyError as err:
            raise PolicyError(f"Statement {index}: {err}") from None
        sid = raw.get("Sid")
        statements.append(
            Statement(
                index=index,
                effect=str(effect),
                actions=actions,
                principals=principals,
                conditions=conditions,
                sid=sid if isinstance(sid, str) else None,
                not_action=not_action,
                not_principal=not_principal,
            )
        )
    return statements


# --- find policies in IAM / Terraform / CloudFormation JSON -----------------------------------


@dataclass(frozen=True)
class FoundPolicy:
    # "$" for a plain policy file, else a path like aws_iam_role.app.values.assume_role_policy
    location: str
    policy: dict[str, object] = field(hash=False)


# Parts of a Terraform plan that describe the past, not what will be applied.
_SKIPPED_KEYS = frozenset({"prior_state", "before", "before_sensitive", "configuration"})


def find_policies(document: object) -> list[FoundPolicy]:
    """Every IAM policy in a document: the document itself, JSON strings holding a policy
    (Terraform `jsonencode`, `aws_iam_policy_document.json`, plan `assume_role_policy`), or
    policies nested anywhere (CloudFormation `AssumeRolePolicyDocument`). Duplicates, as a
    Terraform plan repeats each value, are reported once."""
    found: list[FoundPolicy] = []
    seen: set[str] = set()

    def visit(node: object, path: str) -> None:
        if isinstance(node, str):
            text = node.strip()
            if text.startswith("{") and "Statement" in text:
                try:
                    visit(json.loads(text), path)
                except json.JSONDecodeError:
                    return
            return
        if isinstance(node, list):
            for i, item in enumerate(node):
                visit(item, f"{path}[{i}]")
            return
        if not isinstance(node, dict):
            return
        if "Statement" in node:
            canonical = json.dumps(node, sort_keys=True)
            if canonical not in seen:
                seen.add(canonical)
                found.append(FoundPolicy(path, node))
            return
        address = node.get("address")
        base = address if isinstance(address, str) else path
        for key, value in node.items():
            if key in _SKIPPED_KEYS:
                continue
            visit(value, f"{base}.{key}")

    visit(document, "$")
    return found


# --- lint -------------------------------------------------------------------------------------


def _split_key(key: str) -> tuple[str, str]:
    prefix, _, suffix = key.rpartition(":")
    return prefix, suffix.lower()


def _blocks(clause: Clause) -> bool:
    """Whether an unsatisfiable clause blocks the statement (instead of silently passing)."""
    return not clause.negated and not clause.if_exists and clause.qualifier != "ForAllValues"


def _any_namespace(pattern: str) -> bool:
    """Whether a wildcard sub lets in service accounts of every namespace (else of one)."""
    if not pattern.startswith(SA_SUB_PREFIX):
        return True
    namespace = pattern.removeprefix(SA_SUB_PREFIX).split(":", 1)[0]
    return has_wildcard(namespace) or not namespace


def _lint_sub(
    statement: Statement, clauses: list[Clause], key: str, subs: list[str]
) -> list[Finding]:
    out: list[Finding] = []
    idx = statement.index
    positive = [c for c in clauses if c.base in POSITIVE_STRING_OPERATORS]
    if not positive:
        negated = " (only a negated condition on it)" if clauses else ""
        out.append(
            Finding(
                Severity.ERROR,
                "sub-not-pinned",
                f'no condition pins "{key}"{negated}: every service account in the cluster '
                "(any token from this issuer) can assume this role; add "
                f'StringEquals "{key}": "system:serviceaccount:<namespace>:<name>"',
                statement=idx,
            )
        )
    for clause in positive:
        subs.extend(clause.values)
        for value in clause.values:
            # The hardening rule is "exact StringEquals, no wildcards, no StringLike": every
            # looser form is an error, so a CI step running lint fails on it.
            like = clause.base == "StringLike"
            if like and has_wildcard(value):
                scope = (
                    "service accounts in any namespace"
                    if _any_namespace(value)
                    else "every matching service account in that namespace"
                )
                out.append(
                    Finding(
                        Severity.ERROR,
                        "sub-wildcard",
                        f'"{key}" is matched with StringLike "{value}": {scope} can assume '
                        "this role; pin the exact service account with StringEquals",
                        statement=idx,
                    )
                )
                continue
            if not like and has_wildcard(value):
                out.append(
                    Finding(
                        Severity.ERROR,
                        "sub-literal-wildcard",
                        f'{clause.operator} compares "{value}" literally (wildcards only work with '
                        "StringLike): no token's sub ever equals it, so the role cannot be assumed",
                        statement=idx,
                    )
                )
                continue
            if not _SERVICE_ACCOUNT_SUB.fullmatch(value):
                out.append(
                    Finding(
                        Severity.ERROR,
                        "sub-malformed",
                        f'"{value}" is not a service account subject; projected tokens carry '
                        'sub "system:serviceaccount:<namespace>:<name>", so this never matches',
                        statement=idx,
                    )
                )
            if like:
                out.append(
                    Finding(
                        Severity.ERROR,
                        "sub-stringlike",
                        f'"{key}" uses StringLike; StringEquals matches the same subject and '
                        "cannot be widened by accident with a wildcard",
                        statement=idx,
                    )
                )
            elif clause.base != "StringEquals":
                out.append(
                    Finding(
                        Severity.ERROR,
                        "sub-not-exact",
                        f'"{key}" is compared with {clause.base}, not an exact StringEquals; '
                        "pin the service account with StringEquals",
                        statement=idx,
                    )
                )
    return out


def _lint_aud(
    statement: Statement, clauses: list[Clause], key: str, audience: str
) -> list[Finding]:
    idx = statement.index
    if not clauses:
        return [
            Finding(
                Severity.ERROR,
                "aud-missing",
                f'no condition on "{key}": add StringEquals "{key}": "{audience}" so that tokens '
                "minted for other audiences cannot be used for this role",
                statement=idx,
            )
        ]
    out: list[Finding] = []
    for clause in clauses:
        if clause.negated:
            continue
        if evaluate(clause, {clause.key_lower: [audience]}) is False:
            out.append(
                Finding(
                    Severity.ERROR,
                    "aud-unexpected",
                    f"{describe_clause(clause)} does not accept the configured audience "
                    f'"{audience}" that the webhook requests for tokens, so they are refused',
                    statement=idx,
                )
            )
            continue
        others = [v for v in clause.values if v != audience]
        if others:
            listed = ", ".join(f'"{v}"' for v in others)
            out.append(
                Finding(
                    Severity.WARNING,
                    "aud-unexpected",
                    f'"{key}" also accepts {listed} besides "{audience}"; tokens minted for '
                    "those audiences can assume this role too",
                    statement=idx,
                )
            )
    return out


def _lint_web_identity(
    statement: Statement, providers: list[OidcProvider], audience: str, subs: list[str]
) -> list[Finding]:
    out: list[Finding] = []
    idx = statement.index
    by_prefix = {p.host_path.lower(): p.host_path for p in providers}
    sub_clauses: dict[str, list[Clause]] = {k: [] for k in by_prefix}
    aud_clauses: dict[str, list[Clause]] = {k: [] for k in by_prefix}
    unusable: set[str] = set()  # suffixes whose only conditions can never hold
    for clause in statement.conditions:
        prefix, suffix = _split_key(clause.key)
        if clause.key_lower.startswith(("https://", "http://")):
            bare = clause.key.split("://", 1)[1]
            if _blocks(clause):
                unusable.add(suffix)
                effect = "the condition never matches and the role can never be assumed"
            else:
                effect = f"the condition never applies, so it does not restrict {suffix} at all"
            out.append(
                Finding(
                    Severity.ERROR,
                    "https-in-condition-key",
                    f'condition key "{clause.key}" contains the URL scheme; IAM names the key '
                    f'"{bare}" and has no key with https://, so {effect}',
                    statement=idx,
                )
            )
            continue
        if suffix not in _OIDC_KEY_SUFFIXES or "." not in prefix:
            continue  # global keys (aws:..., sts:...) are not about the token
        if prefix.lower() not in by_prefix:
            trusted = ", ".join(p.host_path for p in providers)
            out.append(
                Finding(
                    Severity.ERROR,
                    "condition-key-wrong-provider",
                    f'condition key "{clause.key}" names issuer {prefix}, but this statement '
                    f"trusts {trusted}; the key is absent from the request, so "
                    + ("the condition never matches" if _blocks(clause) else "it never applies"),
                    statement=idx,
                )
            )
            if _blocks(clause):
                unusable.add(suffix)
            continue
        if suffix == "sub":
            sub_clauses[prefix.lower()].append(clause)
        elif suffix == "aud":
            aud_clauses[prefix.lower()].append(clause)
    for lower, host_path in by_prefix.items():
        if "sub" not in unusable or sub_clauses[lower]:
            out += _lint_sub(statement, sub_clauses[lower], f"{host_path}:sub", subs)
        if "aud" not in unusable or aud_clauses[lower]:
            out += _lint_aud(statement, aud_clauses[lower], f"{host_path}:aud", audience)
    return out


def _account_of(principal: str) -> str | None:
    match = _AWS_PRINCIPAL_ACCOUNT.fullmatch(principal)
    return match.group(1) if match else None


def _lint_aws_principals(statement: Statement, role_accounts: set[str]) -> list[Finding]:
    principals = statement.principals.get("AWS", ()) + statement.principals.get("*", ())
    if not principals:
        return []
    keys = {c.key_lower for c in statement.conditions if not c.negated}
    has_external_id = "sts:externalid" in keys
    out: list[Finding] = []
    if "*" in principals and not keys & _CALLER_SCOPING_KEYS:
        out.append(
            Finding(
                Severity.ERROR,
                "aws-principal-wildcard",
                'Principal "*" with sts:AssumeRole and no sts:ExternalId / aws:PrincipalOrgID / '
                "aws:PrincipalAccount condition: any AWS account can assume this role",
                statement=statement.index,
            )
        )
    if has_external_id:
        return out
    foreign = [
        p for p in principals if (acct := _account_of(p)) is not None and acct not in role_accounts
    ]
    if foreign:
        listed = ", ".join(foreign)
        hedge = (
            ""
            if role_accounts
            else " (if that is not this role's own account; pass --account-id to tell)"
        )
        out.append(
            Finding(
                Severity.WARNING,
                "cross-account-no-external-id",
                f"{listed} may assume this role with sts:AssumeRole without an sts:ExternalId "
                f"condition{hedge}: a third party acting for several customers can be tricked into "
                "using it (confused deputy)",
                statement=statement.index,
            )
        )
    return out


def _lint_statement(
    statement: Statement, audience: str, role_accounts: set[str], subs: list[str]
) -> list[Finding]:
    idx = statement.index
    if statement.not_action or statement.not_principal:
        element = "NotAction" if statement.not_action else "NotPrincipal"
        return [
            Finding(
                Severity.WARNING,
                "not-analysed",
                f"{element} grants everything except the listed entries; rewrite it with "
                f"{element.removeprefix('Not')} so it can be checked",
                statement=idx,
            )
        ]
    if not statement.is_allow:
        return []
    out: list[Finding] = []
    web_identity = statement.allows_action(WEB_IDENTITY_ACTION)
    providers = statement.oidc_providers()
    for federated in statement.principals.get("Federated", ()):
        if "oidc-provider/" in federated and parse_provider_arn(federated) is None:
            out.append(
                Finding(
                    Severity.ERROR,
                    "principal-arn-malformed",
                    f'Federated principal "{federated}" is not an OIDC provider ARN '
                    "(arn:aws:iam::<account>:oidc-provider/<issuer host/path without https://>)",
                    statement=idx,
                )
            )
    if providers and not web_identity:
        out.append(
            Finding(
                Severity.ERROR,
                "action-not-web-identity",
                f"the statement trusts an OIDC provider but its Action does not include "
                f"{WEB_IDENTITY_ACTION}, which is the call the AWS SDK makes with the pod's token",
                statement=idx,
            )
        )
    if web_identity and not providers:
        kinds = (
            ", ".join(
                f"{kind}: {', '.join(ids)}" if kind != "*" else '"*"'
                for kind, ids in statement.principals.items()
            )
            or "none"
        )
        out.append(
            Finding(
                Severity.ERROR,
                "principal-not-oidc",
                f"{WEB_IDENTITY_ACTION} is allowed for principal ({kinds}), which is not an "
                "IAM OIDC provider (Federated: arn:aws:iam::<account>:oidc-provider/<issuer>)",
                statement=idx,
            )
        )
    if web_identity and providers:
        out += _lint_web_identity(statement, providers, audience, subs)
    if statement.actions and any(a in ("*", "sts:*") for a in statement.actions) and providers:
        out.append(
            Finding(
                Severity.INFO,
                "action-wildcard",
                f"Action {', '.join(statement.actions)} grants more than {WEB_IDENTITY_ACTION}; "
                "name the action explicitly",
                statement=idx,
            )
        )
    if statement.allows_action("sts:AssumeRole"):
        out += _lint_aws_principals(statement, role_accounts)
    return out


def lint_policy(
    policy: object, *, audience: str = DEFAULT_AUDIENCE, account_id: str | None = None
) -> list[Finding]:
    """Findings for one trust policy. The role's account is `account_id` if given, else the
    account of the OIDC providers it trusts (used to tell cross-account principals)."""
    try:
        statements = parse_policy(policy)
    except PolicyError as err:
        return [Finding(Severity.ERROR, "invalid-policy", str(err))]
    role_accounts = (
        {account_id} if account_id else {p.account for s in statements for p in s.oidc_providers()}
    )
    findings: list[Finding] = []
    subs: list[str] = []
    for statement in statements:
        findings += _lint_statement(statement, audience, role_accounts, subs)
    distinct = list(dict.fromkeys(subs))
    if len(distinct) > 1:
        findings.append(
            Finding(
                Severity.WARNING,
                "multiple-service-accounts",
                f"{len(distinct)} service account subjects share this role "
                f"({', '.join(distinct)}); one role per workload keeps permissions and CloudTrail "
                "attribution separate",
            )
        )
    return findings
