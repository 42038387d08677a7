"""`pod-identity-webhook trust-policy`: least-privilege generation and linting.

Each lint rule is shown firing on a crafted bad policy; the generated policy lints clean.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from webhook.cli import main
from webhook.toolkit import trust_policy
from webhook.toolkit.render import Finding, Severity

ISSUER = "https://oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
HOST_PATH = ISSUER.removeprefix("https://")
ACCOUNT = "111122223333"
PROVIDER_ARN = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{HOST_PATH}"
SUB = f"{HOST_PATH}:sub"
AUD = f"{HOST_PATH}:aud"


# --- helpers ----------------------------------------------------------------------------------


def generated(namespace: str = "payments", service_account: str = "api") -> dict[str, Any]:
    return trust_policy.generate_trust_policy(
        issuer=ISSUER, account_id=ACCOUNT, namespace=namespace, service_account=service_account
    )


def statement(
    condition: dict[str, Any] | None = None,
    *,
    principal: Any = None,
    action: Any = "sts:AssumeRoleWithWebIdentity",
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Effect": "Allow",
        "Principal": principal if principal is not None else {"Federated": PROVIDER_ARN},
        "Action": action,
    }
    if condition is not None:
        out["Condition"] = condition
    return out


def policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def pinned(
    sub: str | list[str] = "system:serviceaccount:payments:api", **more: Any
) -> dict[str, Any]:
    return {"StringEquals": {SUB: sub, AUD: "sts.amazonaws.com", **more}}


def lint(document: object, **kwargs: Any) -> list[Finding]:
    return trust_policy.lint_policy(document, **kwargs)


def found(findings: list[Finding]) -> dict[str, Severity]:
    return {f.code: f.severity for f in findings}


def write(tmp_path: Path, name: str, data: str | object) -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- generate ---------------------------------------------------------------------------------


def test_generate_prints_the_least_privilege_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys,
        "trust-policy",
        "generate",
        "--issuer",
        ISSUER,
        "--account-id",
        ACCOUNT,
        "--namespace",
        "payments",
        "--service-account",
        "api",
    )
    assert code == 0
    assert json.loads(out) == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Federated": PROVIDER_ARN},
                "Action": "sts:AssumeRoleWithWebIdentity",
                "Condition": {
                    "StringEquals": {
                        SUB: "system:serviceaccount:payments:api",
                        AUD: "sts.amazonaws.com",
                    }
                },
            }
        ],
    }


def test_generate_normalizes_the_issuer_and_honours_partition_and_audience(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(
        capsys,
        "trust-policy",
        "generate",
        "--issuer",
        "https://oidc.example.cn/cluster/",
        "--account-id",
        ACCOUNT,
        "--namespace",
        "ns",
        "--service-account",
        "sa",
        "--partition",
        "aws-cn",
        "--audience",
        "sts.amazonaws.com.cn",
        "--output",
        "json",
    )
    document = json.loads(out)
    assert code == 0
    [stmt] = document["Statement"]
    assert stmt["Principal"]["Federated"] == (
        f"arn:aws-cn:iam::{ACCOUNT}:oidc-provider/oidc.example.cn/cluster"
    )
    assert stmt["Condition"]["StringEquals"] == {
        "oidc.example.cn/cluster:sub": "system:serviceaccount:ns:sa",
        "oidc.example.cn/cluster:aud": "sts.amazonaws.com.cn",
    }


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--account-id", "12345", "must be exactly 12 digits"),
        ("--account-id", "11112222333a", "must be exactly 12 digits"),
        ("--namespace", "Payments", "not a valid Kubernetes namespace"),
        ("--service-account", "*", "not a valid Kubernetes object name"),
        ("--issuer", "http://oidc.example.com", "must use https://"),
        ("--partition", "azure", "not an AWS partition"),
    ],
)
def test_generate_rejects_bad_arguments_with_a_usage_error(
    capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    args = {
        "--issuer": ISSUER,
        "--account-id": ACCOUNT,
        "--namespace": "payments",
        "--service-account": "api",
        flag: value,
    }
    argv = ["trust-policy", "generate"] + [x for pair in args.items() for x in pair]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_the_generated_policy_lints_clean() -> None:
    assert lint(generated()) == []


# --- lint rules -------------------------------------------------------------------------------


def test_sub_not_pinned_is_an_error() -> None:
    findings = lint(policy(statement({"StringEquals": {AUD: "sts.amazonaws.com"}})))
    assert found(findings) == {"sub-not-pinned": Severity.ERROR}
    assert findings[0].statement == 0
    assert "every service account" in findings[0].message


def test_a_negated_sub_condition_does_not_pin_it() -> None:
    document = policy(
        statement(
            {
                "StringNotEquals": {SUB: "system:serviceaccount:kube-system:default"},
                "StringEquals": {AUD: "sts.amazonaws.com"},
            }
        )
    )
    assert found(lint(document)) == {"sub-not-pinned": Severity.ERROR}


def test_sub_wildcard_within_one_namespace_is_an_error() -> None:
    document = policy(
        statement(
            {
                "StringLike": {SUB: "system:serviceaccount:payments:*"},
                "StringEquals": {AUD: "sts.amazonaws.com"},
            }
        )
    )
    findings = lint(document)
    assert found(findings) == {"sub-wildcard": Severity.ERROR}
    assert "every matching service account in that namespace" in findings[0].message


@pytest.mark.parametrize("pattern", ["*", "system:serviceaccount:*", "system:serviceaccount:*:api"])
def test_sub_wildcard_across_namespaces_is_an_error(pattern: str) -> None:
    document = policy(
        statement(
            {
                "StringLike": {SUB: pattern},
                "StringEquals": {AUD: "sts.amazonaws.com"},
            }
        )
    )
    assert found(lint(document)) == {"sub-wildcard": Severity.ERROR}


def test_sub_with_string_like_even_without_wildcard_is_an_error() -> None:
    document = policy(
        statement(
            {
                "StringLike": {SUB: "system:serviceaccount:payments:api"},
                "StringEquals": {AUD: "sts.amazonaws.com"},
            }
        )
    )
    assert found(lint(document)) == {"sub-stringlike": Severity.ERROR}


def test_sub_compared_ignoring_case_is_not_exact_and_an_error() -> None:
    document = policy(
        statement(
            {
                "StringEqualsIgnoreCase": {SUB: "system:serviceaccount:payments:api"},
                "StringEquals": {AUD: "sts.amazonaws.com"},
            }
        )
    )
    assert found(lint(document)) == {"sub-not-exact": Severity.ERROR}


def test_a_wildcard_in_string_equals_is_literal_and_never_matches() -> None:
    document = policy(statement(pinned("system:serviceaccount:payments:*")))
    assert found(lint(document)) == {"sub-literal-wildcard": Severity.ERROR}


def test_a_sub_that_is_not_a_service_account_subject_is_an_error() -> None:
    document = policy(statement(pinned("system:serviceaccounts:payments")))
    assert found(lint(document)) == {"sub-malformed": Severity.ERROR}


def test_missing_aud_condition_is_an_error() -> None:
    document = policy(statement({"StringEquals": {SUB: "system:serviceaccount:payments:api"}}))
    findings = lint(document)
    assert found(findings) == {"aud-missing": Severity.ERROR}
    assert '"sts.amazonaws.com"' in findings[0].message


def test_an_audience_other_than_the_configured_one_is_an_error() -> None:
    document = policy(statement(pinned(**{AUD: "vault"})))
    findings = lint(document)
    assert found(findings) == {"aud-unexpected": Severity.ERROR}
    # ...unless that is the audience the webhook is configured with.
    assert lint(document, audience="vault") == []


def test_extra_accepted_audiences_are_a_warning() -> None:
    document = policy(
        statement(
            {
                "StringEquals": {
                    SUB: "system:serviceaccount:payments:api",
                    AUD: ["sts.amazonaws.com", "vault"],
                },
            }
        )
    )
    findings = lint(document)
    assert found(findings) == {"aud-unexpected": Severity.WARNING}
    assert '"vault"' in findings[0].message


@pytest.mark.parametrize(
    "principal",
    [
        {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
        {"Federated": "accounts.google.com"},
        {"Federated": f"arn:aws:iam::{ACCOUNT}:saml-provider/okta"},
        "*",
    ],
)
def test_web_identity_for_a_principal_that_is_not_an_oidc_provider_is_an_error(
    principal: Any,
) -> None:
    findings = lint(policy(statement(pinned(), principal=principal)))
    assert found(findings)["principal-not-oidc"] is Severity.ERROR


def test_a_provider_arn_with_the_url_scheme_is_malformed() -> None:
    bad = f"arn:aws:iam::{ACCOUNT}:oidc-provider/{ISSUER}"
    findings = lint(policy(statement(pinned(), principal={"Federated": bad})))
    assert {"principal-arn-malformed", "principal-not-oidc"} <= set(found(findings))


def test_https_in_condition_keys_is_an_error_explaining_the_consequence() -> None:
    document = policy(
        statement(
            {
                "StringEquals": {
                    f"{ISSUER}:sub": "system:serviceaccount:payments:api",
                    f"{ISSUER}:aud": "sts.amazonaws.com",
                }
            }
        )
    )
    findings = lint(document)
    assert {f.code for f in findings} == {"https-in-condition-key"}
    assert len(findings) == 2
    assert all("never matches and the role can never be assumed" in f.message for f in findings)

    negated = policy(
        statement(
            {
                "StringEquals": {
                    SUB: "system:serviceaccount:payments:api",
                    AUD: "sts.amazonaws.com",
                },
                "StringNotLike": {f"{ISSUER}:sub": "system:serviceaccount:kube-system:*"},
            }
        )
    )
    [finding] = lint(negated)
    assert finding.code == "https-in-condition-key"
    assert "never applies" in finding.message


def test_condition_keys_of_another_issuer_are_an_error() -> None:
    other = "oidc.eks.eu-west-1.amazonaws.com/id/FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
    document = policy(
        statement(
            {
                "StringEquals": {
                    f"{other}:sub": "system:serviceaccount:payments:api",
                    f"{other}:aud": "sts.amazonaws.com",
                }
            }
        )
    )
    assert found(lint(document)) == {"condition-key-wrong-provider": Severity.ERROR}


def test_several_service_accounts_sharing_a_role_is_a_warning() -> None:
    one = generated("payments", "api")
    other = generated("billing", "worker")
    document = policy(one["Statement"][0], other["Statement"][0])
    findings = lint(document)
    assert found(findings) == {"multiple-service-accounts": Severity.WARNING}
    assert findings[0].statement is None
    assert "system:serviceaccount:billing:worker" in findings[0].message

    listed = policy(statement(pinned(["system:serviceaccount:a:x", "system:serviceaccount:b:y"])))
    assert found(lint(listed)) == {"multiple-service-accounts": Severity.WARNING}


def test_an_oidc_provider_trusted_for_another_action_is_an_error() -> None:
    document = policy(statement(pinned(), action="sts:AssumeRole"))
    assert found(lint(document)) == {"action-not-web-identity": Severity.ERROR}


def test_cross_account_assume_role_without_external_id_is_a_warning() -> None:
    vendor = {
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::999988887777:role/vendor"},
        "Action": "sts:AssumeRole",
    }
    document = policy(generated()["Statement"][0], vendor)
    findings = lint(document)
    assert found(findings) == {"cross-account-no-external-id": Severity.WARNING}
    assert findings[0].statement == 1

    with_external_id = copy.deepcopy(vendor)
    with_external_id["Condition"] = {"StringEquals": {"sts:ExternalId": "b7e1c2"}}
    assert lint(policy(generated()["Statement"][0], with_external_id)) == []

    same_account = dict(vendor, Principal={"AWS": f"arn:aws:iam::{ACCOUNT}:role/ci"})
    assert lint(policy(generated()["Statement"][0], same_account)) == []


def test_an_account_id_tells_the_role_account_when_no_provider_is_named() -> None:
    own = policy({"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"})
    assert found(lint(own)) == {"cross-account-no-external-id": Severity.WARNING}
    assert lint(own, account_id=ACCOUNT) == []


def test_any_aws_account_may_assume_is_an_error() -> None:
    document = policy({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"})
    assert found(lint(document))["aws-principal-wildcard"] is Severity.ERROR


def test_a_document_that_is_not_a_policy_is_reported() -> None:
    assert found(lint({"Statement": [{"Effect": "Maybe"}]})) == {"invalid-policy": Severity.ERROR}


# --- finding policies in Terraform output -----------------------------------------------------


def test_find_policies_in_terraform_shapes() -> None:
    trust = generated()
    as_string = json.dumps(trust)
    assert trust_policy.find_policies(trust)[0].location == "$"
    assert trust_policy.find_policies(as_string)[0].policy == trust  # jsonencode'd file
    document = {"data": {"json": as_string}}  # aws_iam_policy_document output
    assert trust_policy.find_policies(document)[0].location == "$.data.json"
    plan = {
        "planned_values": {
            "root_module": {
                "resources": [
                    {"address": "aws_iam_role.api", "values": {"assume_role_policy": as_string}},
                ]
            }
        },
        "resource_changes": [
            {
                "address": "aws_iam_role.api",
                "change": {
                    "before": {"assume_role_policy": '{"Statement": []}'},
                    "after": {"assume_role_policy": as_string},
                },
            },
        ],
    }
    [only] = trust_policy.find_policies(plan)  # repeated value and old state are skipped
    assert only.location == "aws_iam_role.api.values.assume_role_policy"


# --- CLI --------------------------------------------------------------------------------------


def test_generate_output_lints_clean_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(
        capsys,
        "trust-policy",
        "generate",
        "--issuer",
        ISSUER,
        "--account-id",
        ACCOUNT,
        "--namespace",
        "payments",
        "--service-account",
        "api",
    )
    code, lint_out, _ = run_cli(capsys, "trust-policy", "lint", write(tmp_path, "p.json", out))
    assert code == 0
    assert lint_out.splitlines()[0].endswith("p.json: ok")


def test_lint_exits_1_on_errors_and_0_on_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(
        tmp_path, "bad.json", policy(statement({"StringEquals": {AUD: "sts.amazonaws.com"}}))
    )
    warn = write(
        tmp_path,
        "warn.json",
        policy(statement(pinned(**{AUD: ["sts.amazonaws.com", "vault"]}))),
    )
    code, out, _ = run_cli(capsys, "trust-policy", "lint", warn)
    assert code == 0 and "WARNING aud-unexpected [statement 0]" in out

    code, out, _ = run_cli(capsys, "trust-policy", "lint", bad, warn)
    assert code == 1
    assert "ERROR   sub-not-pinned [statement 0]" in out
    assert "1 error(s), 1 warning(s), 0 info" in out


@pytest.mark.parametrize(
    "condition",
    [
        {
            "StringLike": {SUB: "system:serviceaccount:payments:*"},
            "StringEquals": {AUD: "sts.amazonaws.com"},
        },
        {"StringLike": {SUB: "system:serviceaccount:payments:api", AUD: "sts.amazonaws.com"}},
        {"StringEquals": {SUB: "system:serviceaccount:payments:api"}},
    ],
    ids=["wildcard", "stringlike", "no-aud"],
)
def test_lint_fails_a_ci_step_on_the_hardening_checklist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], condition: dict[str, Any]
) -> None:
    """ "No wildcards, no StringLike, always include :aud": each breach is exit 1."""
    path = write(tmp_path, "p.json", policy(statement(condition)))
    code, out, _ = run_cli(capsys, "trust-policy", "lint", path)
    assert code == 1 and "ERROR" in out


def test_lint_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = {
        "planned_values": {
            "root_module": {
                "resources": [
                    {
                        "address": "aws_iam_role.api",
                        "values": {
                            "assume_role_policy": json.dumps(policy(statement(pinned("*"))))
                        },
                    },
                ]
            }
        }
    }
    path = write(tmp_path, "plan.json", plan)
    code, out, _ = run_cli(capsys, "trust-policy", "lint", path, "--output", "json")
    report = json.loads(out)
    assert code == 1
    assert report["ok"] is False
    assert report["summary"] == {"error": 1, "warning": 0, "info": 0}
    assert report["findings"] == [
        {
            "file": path,
            "location": "aws_iam_role.api.values.assume_role_policy",
            "severity": "error",
            "code": "sub-literal-wildcard",
            "message": report["findings"][0]["message"],
            "where": None,
            "statement": 0,
        }
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("{not json", "is not valid JSON", id="not-json"),
        pytest.param('{"resource": {}}', "no IAM policy", id="no-policy"),
        pytest.param("[]", "no IAM policy", id="empty-list"),
    ],
)
def test_lint_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    code, out, err = run_cli(capsys, "trust-policy", "lint", write(tmp_path, "x.json", content))
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "trust-policy", "lint", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read policy file" in err
