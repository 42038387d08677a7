"""What a pod gets: upstream's additions, in upstream's order, as surgical patch operations."""

from typing import Any

import pytest

from webhook.core.identity import Lookup, Mode, entry_from_annotations, resolve_identity
from webhook.core.mutation import identity_warnings, role_arn_warning
from webhook.core.settings import ContainerCredentialsSettings, MutationSettings

from .builders import (
    MOUNT_PATH,
    ROLE,
    TOKEN_FILE,
    apply,
    container,
    env_of,
    mutate,
    plan,
    pod,
    web_identity,
)

S = MutationSettings()
MOUNT = {"name": "aws-iam-token", "readOnly": True, "mountPath": MOUNT_PATH}


def cc_identity(settings: MutationSettings = S) -> Any:
    identity = resolve_identity(Lookup(container_credentials=True), settings)
    assert identity is not None and identity.mode is Mode.CONTAINER_CREDENTIALS
    return identity


class TestEnvironment:
    def test_credentials_are_appended_after_existing_env(self) -> None:
        p = pod(container(env=[{"name": "A", "value": "1"}]))
        assert env_of(mutate(p, web_identity())) == [
            ("A", "1"),
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", TOKEN_FILE),
        ]

    def test_order_is_sts_then_region_pair_then_credentials(self) -> None:
        settings = MutationSettings(aws_default_region="eu-west-1", sts_regional_endpoint=True)
        env = env_of(mutate(pod(), web_identity(settings), settings))
        assert env == [
            ("AWS_STS_REGIONAL_ENDPOINTS", "regional"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", TOKEN_FILE),
        ]

    def test_regional_sts_comes_from_the_service_account_annotation(self) -> None:
        env = env_of(mutate(pod(), web_identity(sts_regional_endpoints="true")))
        assert env[0] == ("AWS_STS_REGIONAL_ENDPOINTS", "regional")

    @pytest.mark.parametrize("present", ["AWS_REGION", "AWS_DEFAULT_REGION"])
    def test_either_region_variable_suppresses_both(self, present: str) -> None:
        settings = MutationSettings(aws_default_region="eu-west-1")
        p = pod(container(env=[{"name": present, "value": "us-east-1"}]))
        names = [n for n, _ in env_of(mutate(p, web_identity(settings), settings))]
        assert names == [present, "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]

    @pytest.mark.parametrize("present", ["AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"])
    def test_either_credential_variable_counts_as_the_pair(self, present: str) -> None:
        p = pod(container(env=[{"name": present, "value": "mine"}]))
        out = mutate(p, web_identity())
        assert env_of(out) == [(present, "mine")]
        assert out["spec"]["containers"][0]["volumeMounts"] == [MOUNT]

    def test_env_from_does_not_count_as_present(self) -> None:
        p = pod(container(envFrom=[{"configMapRef": {"name": "aws"}}]))
        assert [n for n, _ in env_of(mutate(p, web_identity()))] == [
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ]

    def test_a_complete_container_is_left_untouched_even_without_the_mount(self) -> None:
        env = [
            {"name": "AWS_ROLE_ARN", "value": "x"},
            {"name": "AWS_REGION", "value": "x"},
            {"name": "AWS_STS_REGIONAL_ENDPOINTS", "value": "legacy"},
        ]
        p = pod(container(env=env))
        result = plan(p, web_identity())
        assert not [op for op in result.operations if op["path"].startswith("/spec/containers")]

    def test_null_env_is_replaced_by_a_list(self) -> None:
        assert env_of(mutate(pod(container(env=None)), web_identity()))[0][0] == "AWS_ROLE_ARN"


class TestContainers:
    def test_init_containers_are_mutated_before_containers(self) -> None:
        p = pod(container("main"), initContainers=[container("init")])
        paths = [op["path"] for op in plan(p, web_identity()).operations]
        first_init = min(
            i for i, path in enumerate(paths) if path.startswith("/spec/initContainers")
        )
        first_main = min(i for i, path in enumerate(paths) if path.startswith("/spec/containers"))
        assert first_init < first_main
        out = mutate(p, web_identity())
        assert env_of(out, kind="initContainers")[0] == ("AWS_ROLE_ARN", ROLE)

    def test_ephemeral_containers_are_never_touched(self) -> None:
        p = pod(ephemeralContainers=[container("debug")])
        assert mutate(p, web_identity())["spec"]["ephemeralContainers"] == [container("debug")]

    def test_skip_containers_annotation_uses_csv(self) -> None:
        p = pod(
            container("a"),
            container("b, c"),
            container(" d"),
            container("e"),
            metadata={"annotations": {"eks.amazonaws.com/skip-containers": 'a,"b, c", d'}},
        )
        out = mutate(p, web_identity())
        mutated = [c["name"] for c in out["spec"]["containers"] if c.get("env")]
        assert mutated == ["e"]

    def test_unparsable_skip_list_skips_nothing(self) -> None:
        p = pod(
            container("a"), metadata={"annotations": {"eks.amazonaws.com/skip-containers": 'a"b'}}
        )
        assert env_of(mutate(p, web_identity()))

    def test_existing_mount_with_our_name_is_kept(self) -> None:
        mine = {"name": "aws-iam-token", "mountPath": "/custom", "readOnly": True}
        out = mutate(pod(container(volumeMounts=[mine])), web_identity())
        assert out["spec"]["containers"][0]["volumeMounts"] == [mine]

    def test_mount_is_appended_to_existing_mounts(self) -> None:
        other = {"name": "data", "mountPath": "/data"}
        out = mutate(pod(container(volumeMounts=[other])), web_identity())
        assert out["spec"]["containers"][0]["volumeMounts"] == [other, MOUNT]


class TestVolume:
    def test_projected_token_volume(self) -> None:
        out = mutate(pod(), web_identity(audience="my-aud", token_expiration="3600"))
        assert out["spec"]["volumes"] == [
            {
                "name": "aws-iam-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "my-aud",
                                "expirationSeconds": 3600,
                                "path": "token",
                            }
                        }
                    ]
                },
            }
        ]

    def test_volume_is_prepended_like_upstream(self) -> None:
        out = mutate(pod(volumes=[{"name": "data", "emptyDir": {}}]), web_identity())
        assert [v["name"] for v in out["spec"]["volumes"]] == ["aws-iam-token", "data"]

    def test_existing_volume_with_our_name_is_kept(self) -> None:
        mine = {"name": "aws-iam-token", "secret": {"secretName": "x"}}
        assert mutate(pod(volumes=[mine]), web_identity())["spec"]["volumes"] == [mine]

    def test_custom_mount_path_is_cleaned(self) -> None:
        settings = MutationSettings(token_mount_path="/var/run//aws/")
        env = dict(env_of(mutate(pod(), web_identity(settings), settings)))
        assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == "/var/run/aws/token"


class TestTokenExpiration:
    def test_pod_annotation_overrides_service_account(self) -> None:
        p = pod(metadata={"annotations": {"eks.amazonaws.com/token-expiration": "7200"}})
        assert plan(p, web_identity(token_expiration="3600")).token_expiration == 7200

    @pytest.mark.parametrize(("value", "expected"), [("junk", 3600), ("10", 600)])
    def test_pod_annotation_is_parsed_and_clamped(self, value: str, expected: int) -> None:
        p = pod(metadata={"annotations": {"eks.amazonaws.com/token-expiration": value}})
        assert plan(p, web_identity(token_expiration="3600")).token_expiration == expected

    def test_web_identity_has_no_jitter(self) -> None:
        assert plan(pod(), web_identity(), jitter=80000).token_expiration == 86400


@pytest.mark.parametrize(
    "spec",
    [
        {"nodeSelector": {"kubernetes.io/os": "windows"}},
        {"nodeSelector": {"beta.kubernetes.io/os": "windows"}},
        {"os": {"name": "windows"}},  # improvement: upstream ignores spec.os
    ],
)
def test_windows_pods_get_a_windows_token_path(spec: dict[str, Any]) -> None:
    env = dict(env_of(mutate(pod(**spec), web_identity())))
    assert (
        env["AWS_WEB_IDENTITY_TOKEN_FILE"]
        == r"C:\var\run\secrets\eks.amazonaws.com\serviceaccount\token"
    )


def test_linux_node_selector_keeps_the_unix_path() -> None:
    env = dict(env_of(mutate(pod(nodeSelector={"kubernetes.io/os": "linux"}), web_identity())))
    assert env["AWS_WEB_IDENTITY_TOKEN_FILE"] == TOKEN_FILE


class TestContainerCredentials:
    def test_env_mount_volume_and_label(self) -> None:
        settings = MutationSettings(aws_default_region="us-west-2")
        out = mutate(pod(), cc_identity(settings), settings)
        token = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"
        assert env_of(out) == [
            ("AWS_DEFAULT_REGION", "us-west-2"),
            ("AWS_REGION", "us-west-2"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token),
        ]
        assert out["spec"]["containers"][0]["volumeMounts"] == [
            {
                "name": "eks-pod-identity-token",
                "readOnly": True,
                "mountPath": "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount",
            }
        ]
        source = out["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
        assert source["audience"] == "pods.eks.amazonaws.com"
        assert source["path"] == "eks-pod-identity-token"
        assert out["metadata"]["labels"] == {"eks.amazonaws.com/pod-identity": "enabled"}

    def test_label_is_added_beside_existing_labels(self) -> None:
        p = pod(metadata={"name": "p", "labels": {"app": "x"}})
        ops = plan(p, cc_identity()).operations
        assert {
            "op": "add",
            "path": "/metadata/labels/eks.amazonaws.com~1pod-identity",
            "value": "enabled",
        } in ops
        assert mutate(p, cc_identity())["metadata"]["labels"] == {
            "app": "x",
            "eks.amazonaws.com/pod-identity": "enabled",
        }

    def test_default_expiration_gets_jitter(self) -> None:
        assert plan(pod(), cc_identity(), jitter=80123).token_expiration == 80123

    def test_explicit_expiration_gets_no_jitter(self) -> None:
        p = pod(metadata={"annotations": {"eks.amazonaws.com/token-expiration": "3600"}})
        assert plan(p, cc_identity(), jitter=80123).token_expiration == 3600

    def test_custom_flags_are_used(self) -> None:
        cc = ContainerCredentialsSettings("aud", "/mnt/t", "vol", "tok", "http://127.0.0.1/creds")
        settings = MutationSettings(container_credentials=cc)
        out = mutate(pod(), cc_identity(settings), settings)
        assert dict(env_of(out)) == {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1/creds",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/mnt/t/tok",
        }
        assert out["spec"]["volumes"][0]["name"] == "vol"


class TestSurgicalAndIdempotent:
    def test_fields_unknown_to_any_kubernetes_version_survive(self) -> None:
        p = pod(
            container(
                "app",
                restartPolicy="Always",
                resizePolicy=[{"resourceName": "cpu", "restartPolicy": "NotRequired"}],
                futureField={"nested": [1, 2, {"x": None}]},
                env=[{"name": "A", "value": "1", "futureEnvField": True}],
            ),
            futureSpecField="kept",
            metadata={"name": "p", "futureMeta": 1},
        )
        p["futureTopLevel"] = {"a": "b"}
        out = mutate(p, web_identity())
        c = out["spec"]["containers"][0]
        assert c["futureField"] == {"nested": [1, 2, {"x": None}]}
        assert (
            c["restartPolicy"] == "Always"
            and c["resizePolicy"] == p["spec"]["containers"][0]["resizePolicy"]
        )
        assert c["env"][0] == {"name": "A", "value": "1", "futureEnvField": True}
        assert out["spec"]["futureSpecField"] == "kept" and out["futureTopLevel"] == {"a": "b"}
        assert out["metadata"]["futureMeta"] == 1

    def test_operations_only_add(self) -> None:
        ops = plan(pod(volumes=[]), web_identity()).operations
        assert {op["op"] for op in ops} == {"add"}
        assert all(not op["path"].endswith(("/containers/0", "/containers")) for op in ops)

    @pytest.mark.parametrize("cc", [False, True])
    def test_replanning_our_output_changes_nothing(self, cc: bool) -> None:
        settings = MutationSettings(aws_default_region="eu-west-1", sts_regional_endpoint=True)
        identity = cc_identity(settings) if cc else web_identity(settings)
        p = pod(container("a"), initContainers=[container("i")])
        once = mutate(p, identity, settings)
        assert plan(once, identity, settings).operations == []

    def test_a_pod_that_already_has_everything_gets_no_operations(self) -> None:
        p = pod(
            container(
                env=[
                    {"name": "AWS_ROLE_ARN", "value": ROLE},
                    {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": TOKEN_FILE},
                ],
                volumeMounts=[MOUNT],
            ),
            volumes=[{"name": "aws-iam-token", "projected": {"sources": []}}],
        )
        assert plan(p, web_identity()).operations == []
        assert apply(p, []) == p


def test_invalid_role_arn_is_injected_with_a_warning() -> None:
    identity = web_identity(role_arn="not-an-arn")
    assert dict(env_of(mutate(pod(), identity)))["AWS_ROLE_ARN"] == "not-an-arn"
    warning = role_arn_warning(identity, "default", "app")
    assert warning is not None and "not-an-arn" in warning and "default/app" in warning
    assert role_arn_warning(web_identity(), "default", "app") is None


class TestNeverAPatchTheAPIServerRejects:
    """A valid pod stays valid: where upstream's recipe would break it, we deviate and warn."""

    def test_a_container_mounting_something_else_at_the_token_path_keeps_only_its_mount(
        self,
    ) -> None:
        theirs = {"name": "own-token", "mountPath": MOUNT_PATH}
        p = pod(container(volumeMounts=[theirs]), volumes=[{"name": "own-token", "emptyDir": {}}])
        result = plan(p, web_identity())
        out = apply(p, result.operations)
        assert out["spec"]["containers"][0]["volumeMounts"] == [theirs]
        assert dict(env_of(out))["AWS_WEB_IDENTITY_TOKEN_FILE"] == TOKEN_FILE
        assert [v["name"] for v in out["spec"]["volumes"]] == ["aws-iam-token", "own-token"]
        (warning,) = result.warnings
        assert "'app'" in warning and "'own-token'" in warning and MOUNT_PATH in warning
        assert "AWS_WEB_IDENTITY_TOKEN_FILE" in warning

    def test_a_raw_block_device_at_the_token_path_blocks_our_mount_too(self) -> None:
        device = {"name": "disk", "devicePath": MOUNT_PATH}
        result = plan(pod(container(volumeDevices=[device])), web_identity())
        out = apply(pod(container(volumeDevices=[device])), result.operations)
        assert "volumeMounts" not in out["spec"]["containers"][0]
        assert len(result.warnings) == 1 and "has block device 'disk'" in result.warnings[0]

    @pytest.mark.parametrize(
        "path",
        [MOUNT_PATH + "/", MOUNT_PATH + "/token", "/var/run/secrets/eks.amazonaws.com", "/x"],
    )
    def test_mounts_near_the_token_path_do_not_conflict(self, path: str) -> None:
        # The API server compares mount paths as strings; nesting is allowed.
        near = {"name": "data", "mountPath": path}
        result = plan(pod(container(volumeMounts=[near])), web_identity())
        out = apply(pod(container(volumeMounts=[near])), result.operations)
        assert out["spec"]["containers"][0]["volumeMounts"] == [near, MOUNT]
        assert result.warnings == []

    def test_only_the_occupied_container_is_spared_in_init_and_regular_lists(self) -> None:
        theirs = {"name": "own", "mountPath": MOUNT_PATH}
        p = pod(
            container("free"),
            container("busy", volumeMounts=[theirs]),
            initContainers=[container("init", volumeMounts=[theirs])],
        )
        result = plan(p, web_identity())
        out = apply(p, result.operations)
        assert [c.get("volumeMounts") for c in out["spec"]["containers"]] == [[MOUNT], [theirs]]
        assert out["spec"]["initContainers"][0]["volumeMounts"] == [theirs]
        assert sorted(w.split("'")[1] for w in result.warnings) == ["busy", "init"]

    def test_container_credentials_mode_respects_its_own_mount_path(self) -> None:
        cc_path = "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount"
        theirs = {"name": "own", "mountPath": cc_path}
        result = plan(pod(container(volumeMounts=[theirs])), cc_identity())
        out = apply(pod(container(volumeMounts=[theirs])), result.operations)
        assert out["spec"]["containers"][0]["volumeMounts"] == [theirs]
        assert "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE" in result.warnings[0]

    def test_replanning_a_spared_container_adds_nothing_and_repeats_no_warning(self) -> None:
        theirs = {"name": "own", "mountPath": MOUNT_PATH}
        once = mutate(pod(container(volumeMounts=[theirs])), web_identity())
        again = plan(once, web_identity())
        assert again.operations == [] and again.warnings == []

    def test_a_user_who_set_the_token_env_and_mount_themselves_is_not_warned(self) -> None:
        own = [{"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": MOUNT_PATH + "/mine"}]
        theirs = {"name": "own", "mountPath": MOUNT_PATH}
        assert plan(pod(container(env=own, volumeMounts=[theirs])), web_identity()).warnings == []


class TestExpirationWithinTheAPIServersRange:
    @pytest.mark.parametrize(
        ("value", "expected"), [("4294967296", 2**32), ("4294967297", 2**32), ("-5", 600)]
    )
    def test_pod_annotation_is_kept_within_600_and_2_to_the_32(
        self, value: str, expected: int
    ) -> None:
        p = pod(metadata={"annotations": {"eks.amazonaws.com/token-expiration": value}})
        assert plan(p, web_identity()).token_expiration == expected

    def test_a_pod_annotation_above_the_maximum_is_clamped_with_a_warning(self) -> None:
        p = pod(metadata={"annotations": {"eks.amazonaws.com/token-expiration": "9" * 18}})
        result = plan(p, web_identity())
        token = apply(p, result.operations)["spec"]["volumes"][0]["projected"]["sources"][0]
        assert token["serviceAccountToken"]["expirationSeconds"] == 2**32
        (warning,) = result.warnings
        assert "9" * 18 in warning and "eks.amazonaws.com/token-expiration" in warning
        assert "pod annotation" in warning

    def test_the_maximum_itself_needs_no_warning(self) -> None:
        p = pod(metadata={"annotations": {"eks.amazonaws.com/token-expiration": str(2**32)}})
        assert plan(p, web_identity()).warnings == []

    def test_a_service_account_annotation_above_the_maximum_is_clamped_with_a_warning(
        self,
    ) -> None:
        identity = web_identity(token_expiration=str(2**40))
        assert plan(pod(), identity).token_expiration == 2**32
        (warning,) = identity_warnings(identity, "default", "app")
        assert "ServiceAccount default/app" in warning and str(2**40) in warning

    def test_container_credentials_carry_the_service_accounts_expiration_warning(self) -> None:
        entry = entry_from_annotations({"eks.amazonaws.com/token-expiration": str(2**33)}, S)
        identity = resolve_identity(Lookup(service_account=entry, container_credentials=True), S)
        assert identity is not None and identity.token_expiration == 2**32
        assert len(identity_warnings(identity, "default", "app")) == 1


class TestEmptyAudience:
    def test_an_empty_audience_annotation_means_the_default_audience_with_a_warning(
        self,
    ) -> None:
        identity = web_identity(audience="")
        out = mutate(pod(), identity)
        token = out["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
        assert token["audience"] == "sts.amazonaws.com"
        (warning,) = identity_warnings(identity, "default", "app")
        assert "eks.amazonaws.com/audience" in warning and "'sts.amazonaws.com'" in warning

    def test_an_empty_container_credentials_audience_flag_is_omitted_as_upstream_does(
        self,
    ) -> None:
        cc = ContainerCredentialsSettings(audience="")
        settings = MutationSettings(container_credentials=cc)
        out = mutate(pod(), cc_identity(settings), settings)
        token = out["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
        assert "audience" not in token
