"""Which identity a pod gets, in upstream's order, from what the sources know."""

import pytest

from webhook.core.configmap import ConfigMapError, parse_config
from webhook.core.identity import (
    IdentityEntry,
    Lookup,
    Mode,
    Source,
    entry_from_annotations,
    is_valid_role_arn,
    resolve_identity,
)
from webhook.core.settings import MutationSettings, RoleArnComposition

from .builders import ROLE

S = MutationSettings()
P = "eks.amazonaws.com/"


def entry(**annotations: str) -> IdentityEntry:
    return entry_from_annotations({P + k: v for k, v in annotations.items()}, S)


class TestServiceAccountAnnotations:
    def test_role_and_defaults_from_flags(self) -> None:
        e = entry(**{"role-arn": ROLE})
        assert e == IdentityEntry(ROLE, "sts.amazonaws.com", False, 86400)

    def test_every_annotation_overrides_its_flag(self) -> None:
        e = entry(
            **{
                "role-arn": ROLE,
                "audience": "aud",
                "sts-regional-endpoints": "true",
                "token-expiration": "3600",
            }
        )
        assert e == IdentityEntry(ROLE, "aud", True, 3600)

    @pytest.mark.parametrize("value", ["yes", "enabled", ""])
    def test_invalid_regional_sts_falls_back_to_the_flag(self, value: str) -> None:
        settings = MutationSettings(sts_regional_endpoint=True)
        e = entry_from_annotations(
            {P + "role-arn": ROLE, P + "sts-regional-endpoints": value}, settings
        )
        assert e.use_regional_sts is True

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("abc", 7200), ("1.5", 7200), ("100", 600), ("-3", 600), ("100000", 100000)],
    )
    def test_expiration_is_parsed_as_int64_and_clamped_to_600(
        self, value: str, expected: int
    ) -> None:
        settings = MutationSettings(token_expiration=7200)
        e = entry_from_annotations({P + "role-arn": ROLE, P + "token-expiration": value}, settings)
        assert e.token_expiration == expected

    def test_flag_expiration_is_clamped_too(self) -> None:
        assert MutationSettings(token_expiration=60).token_expiration == 600

    def test_annotation_prefix_is_configurable(self) -> None:
        settings = MutationSettings(annotation_prefix="example.com")
        assert entry_from_annotations({"example.com/role-arn": ROLE}, settings).role_arn == ROLE
        assert entry_from_annotations({P + "role-arn": ROLE}, settings).role_arn == ""

    def test_compose_role_arn_turns_a_name_into_an_arn(self) -> None:
        settings = MutationSettings(compose_role_arn=RoleArnComposition("111122223333", "aws-cn"))
        assert entry_from_annotations({P + "role-arn": "path/app"}, settings).role_arn == (
            "arn:aws-cn:iam::111122223333:role/path/app"
        )
        assert entry_from_annotations({P + "role-arn": ROLE}, settings).role_arn == ROLE


@pytest.mark.parametrize(
    ("arn", "valid"),
    [
        (ROLE, True),
        ("arn:aws-us-gov:iam::111122223333:role/a/b_c-d.e@f+g=h,i", True),
        ("arn:aws:iam::11112222333:role/app", False),
        ("arn:aws:iam::111122223333:user/app", False),
        ("app", False),
        (ROLE + "\n", False),  # Go's `$` does not match before a trailing newline
        ("arn:aws:iam::111122223333:role/appé", False),  # \w is ASCII in RE2
    ],
)
def test_role_arn_validity_matches_upstreams_regex(arn: str, valid: bool) -> None:
    assert is_valid_role_arn(arn) is valid


class TestResolution:
    def test_no_source_means_no_identity(self) -> None:
        assert resolve_identity(Lookup(), S) is None
        assert resolve_identity(Lookup(service_account=entry()), S) is None

    def test_service_account_role_wins_over_config_map(self) -> None:
        cm = IdentityEntry("arn:aws:iam::999999999999:role/cm", "sts.amazonaws.com", False, 86400)
        identity = resolve_identity(
            Lookup(service_account=entry(**{"role-arn": ROLE}), config_map=cm), S
        )
        assert identity is not None
        assert (identity.role_arn, identity.source) == (ROLE, Source.ANNOTATION)

    def test_config_map_applies_when_the_service_account_has_no_role(self) -> None:
        cm = IdentityEntry("arn:aws:iam::999999999999:role/cm", "x", True, 3600)
        identity = resolve_identity(Lookup(service_account=entry(), config_map=cm), S)
        assert identity is not None
        assert (
            identity.role_arn,
            identity.audience,
            identity.use_regional_sts,
            identity.token_expiration,
        ) == (
            cm.role_arn,
            "x",
            True,
            3600,
        )
        assert identity.source is Source.CONFIG_MAP

    def test_config_map_entry_without_role_means_no_identity(self) -> None:
        assert resolve_identity(Lookup(config_map=IdentityEntry("", "a", False, 86400)), S) is None

    def test_container_credentials_take_precedence_over_a_role(self) -> None:
        sa = entry(
            **{"role-arn": ROLE, "sts-regional-endpoints": "true", "token-expiration": "4000"}
        )
        identity = resolve_identity(Lookup(service_account=sa, container_credentials=True), S)
        assert identity is not None
        assert identity.mode is Mode.CONTAINER_CREDENTIALS
        assert (identity.audience, identity.use_regional_sts, identity.token_expiration) == (
            "pods.eks.amazonaws.com",
            True,
            4000,
        )

    def test_container_credentials_use_the_service_account_even_without_role(self) -> None:
        settings = MutationSettings(sts_regional_endpoint=True, token_expiration=5000)
        sa = entry_from_annotations({}, settings)
        identity = resolve_identity(
            Lookup(service_account=sa, container_credentials=True), settings
        )
        assert identity is not None
        assert (identity.use_regional_sts, identity.token_expiration) == (True, 5000)

    def test_container_credentials_fall_back_to_the_exact_namespace_config_map(self) -> None:
        cm = IdentityEntry("", "a", True, 1234)
        glob = IdentityEntry("", "a", False, 999)
        identity = resolve_identity(
            Lookup(config_map=glob, config_map_exact=cm, container_credentials=True), S
        )
        assert identity is not None
        assert (identity.use_regional_sts, identity.token_expiration) == (True, 1234)

    def test_container_credentials_defaults_are_false_and_86400_not_the_flags(self) -> None:
        settings = MutationSettings(sts_regional_endpoint=True, token_expiration=5000)
        identity = resolve_identity(Lookup(container_credentials=True), settings)
        assert identity is not None
        assert (identity.use_regional_sts, identity.token_expiration) == (False, 86400)


class TestConfigMap:
    def test_exact_key_with_upstream_field_names(self) -> None:
        index = parse_config(
            '{"ns/sa": {"RoleARN": "r", "Audience": "a", "UseRegionalSTS": true, "TokenExpiration": 3600}}',
            S,
        )
        assert index.lookup("ns", "sa") == IdentityEntry("r", "a", True, 3600)

    def test_field_names_match_case_insensitively(self) -> None:
        index = parse_config(
            '{"ns/sa": {"rolearn": "r", "AUDIENCE": "a", "useregionalsts": true}}', S
        )
        assert index.lookup("ns", "sa") == IdentityEntry("r", "a", True, 86400)

    def test_missing_audience_and_zero_expiration_take_the_flags(self) -> None:
        settings = MutationSettings(token_audience="mine", token_expiration=7200)
        index = parse_config(
            '{"ns/sa": {"RoleARN": "r", "Audience": "", "TokenExpiration": 0}}', settings
        )
        found = index.lookup("ns", "sa")
        assert found is not None
        assert (found.role_arn, found.audience, found.token_expiration) == ("r", "mine", 7200)

    def test_an_explicitly_empty_audience_is_defaulted_with_a_warning(self) -> None:
        index = parse_config('{"ns/sa": {"RoleARN": "r", "Audience": ""}}', S)
        found = index.lookup("ns", "sa")
        assert found is not None and found.audience == "sts.amazonaws.com"
        assert found.audience_warning is not None and "Audience" in found.audience_warning
        missing = parse_config('{"ns/sa": {"RoleARN": "r"}}', S).lookup("ns", "sa")
        assert missing is not None and missing.audience_warning is None

    def test_regional_sts_defaults_to_false_not_the_flag(self) -> None:
        index = parse_config(
            '{"ns/sa": {"RoleARN": "r"}}', MutationSettings(sts_regional_endpoint=True)
        )
        entry = index.lookup("ns", "sa")
        assert entry is not None and entry.use_regional_sts is False

    def test_short_expiration_is_clamped(self) -> None:
        index = parse_config('{"ns/sa": {"RoleARN": "r", "TokenExpiration": 60}}', S)
        entry = index.lookup("ns", "sa")
        assert entry is not None and entry.token_expiration == 600

    def test_exact_namespace_then_longest_glob_then_star(self) -> None:
        index = parse_config(
            '{"*/sa": {"RoleARN": "star"}, "team-*/sa": {"RoleARN": "team"},'
            ' "team-a*/sa": {"RoleARN": "team-a"}, "team-a1/sa": {"RoleARN": "exact"}}',
            S,
        )
        roles = {
            ns: (index.lookup(ns, "sa") or IdentityEntry("", "", False, 0)).role_arn
            for ns in ("team-a1", "team-a2", "team-b", "other")
        }
        assert roles == {"team-a1": "exact", "team-a2": "team-a", "team-b": "team", "other": "star"}
        assert index.lookup("team-b", "other-sa") is None

    def test_equal_length_globs_are_ordered_lexically(self) -> None:
        index = parse_config('{"b*/sa": {"RoleARN": "b"}, "*a/sa": {"RoleARN": "a"}}', S)
        entry = index.lookup("ba", "sa")  # both match; "*a" sorts before "b*"
        assert entry is not None and entry.role_arn == "a"

    def test_exact_lookup_ignores_globs(self) -> None:
        index = parse_config('{"*/sa": {"RoleARN": "star"}}', S)
        assert index.lookup_exact("ns", "sa") is None

    def test_key_without_slash_is_ignored_with_a_warning(self) -> None:
        index = parse_config('{"nonsense": {"RoleARN": "r"}, "ns/sa": {"RoleARN": "ok"}}', S)
        assert len(index) == 1
        assert index.warnings and "nonsense" in index.warnings[0]

    @pytest.mark.parametrize(
        "document",
        [
            "not json",
            "[1]",
            '{"ns/sa": {"UseRegionalSTS": "true"}}',
            '{"ns/sa": {"TokenExpiration": 1.5}}',
            '{"ns/sa": 3}',
        ],
    )
    def test_malformed_documents_are_rejected_whole(self, document: str) -> None:
        with pytest.raises(ConfigMapError):
            parse_config(document, S)

    def test_empty_document_means_no_entries(self) -> None:
        assert len(parse_config("", S)) == 0
        assert len(parse_config(None, S)) == 0

    @pytest.mark.parametrize("document", ["null", " null\n", "  \n\t", "{}"])
    def test_null_and_blank_documents_mean_no_entries(self, document: str) -> None:
        # Upstream decodes `null` into an empty map (its entries go); blank is our choice.
        assert len(parse_config(document, S)) == 0

    @pytest.mark.parametrize(
        "document",
        [
            '{"ns/sa": {"RoleARN": "r", "Other": NaN}}',
            '{"ns/sa": {"RoleARN": "r", "TokenExpiration": Infinity}}',
            '{"ns/sa": {"RoleARN": 5}}',
            '{"ns/sa": {"Audience": ["a"]}}',
            '"ns/sa"',
            "[]",
            '{"ns/sa": {"RoleARN": "r"}} trailing',
        ],
    )
    def test_what_go_cannot_decode_is_rejected_whole(self, document: str) -> None:
        with pytest.raises(ConfigMapError):
            parse_config(document, S)

    @pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
    def test_an_expiration_past_64_bits_rejects_the_document(self, value: int) -> None:
        # Upstream's int64 field cannot hold it either: the previous document stays.
        with pytest.raises(ConfigMapError, match="int64"):
            parse_config(f'{{"ns/sa": {{"RoleARN": "r", "TokenExpiration": {value}}}}}', S)

    def test_an_expiration_above_2_to_the_32_is_clamped_with_a_warning(self) -> None:
        index = parse_config(f'{{"ns/sa": {{"RoleARN": "r", "TokenExpiration": {2**63 - 1}}}}}', S)
        found = index.lookup("ns", "sa")
        assert found is not None and found.token_expiration == 2**32
        assert found.expiration_warning is not None
        assert str(2**63 - 1) in found.expiration_warning
        assert "ConfigMap" in found.expiration_warning


class TestAnnotationsTheAPIServerCouldNotUse:
    def test_an_empty_audience_annotation_is_unset_with_a_warning(self) -> None:
        e = entry(**{"role-arn": ROLE, "audience": ""})
        assert e.audience == "sts.amazonaws.com"
        assert e.audience_warning is not None and P + "audience" in e.audience_warning

    def test_a_non_empty_audience_has_no_warning(self) -> None:
        assert entry(**{"role-arn": ROLE, "audience": " "}).audience_warning is None

    @pytest.mark.parametrize(
        ("value", "expected", "warns"),
        [
            (str(2**32), 2**32, False),
            (str(2**32 + 1), 2**32, True),
            (str(2**63 - 1), 2**32, True),
            (str(2**63), 86400, False),  # not an int64: invalid, the flag applies
        ],
    )
    def test_expiration_is_clamped_to_2_to_the_32(
        self, value: str, expected: int, warns: bool
    ) -> None:
        e = entry(**{"role-arn": ROLE, "token-expiration": value})
        assert e.token_expiration == expected
        assert (e.expiration_warning is not None) is warns

    def test_warnings_reach_the_identity_in_web_identity_mode(self) -> None:
        e = entry(**{"role-arn": ROLE, "audience": "", "token-expiration": str(2**40)})
        identity = resolve_identity(Lookup(service_account=e), S)
        assert identity is not None and len(identity.warnings) == 2

    def test_container_credentials_ignore_the_audience_warning(self) -> None:
        e = entry(audience="", **{"token-expiration": str(2**40)})
        identity = resolve_identity(Lookup(service_account=e, container_credentials=True), S)
        assert identity is not None and identity.warnings == (e.expiration_warning,)

    def test_the_flag_itself_is_clamped(self) -> None:
        assert MutationSettings(token_expiration=2**40).token_expiration == 2**32


def test_an_empty_role_annotation_is_no_role_even_with_compose_role_arn() -> None:
    settings = MutationSettings(compose_role_arn=RoleArnComposition("111122223333"))
    entry = entry_from_annotations({P + "role-arn": ""}, settings)
    assert entry.role_arn == ""
    assert resolve_identity(Lookup(service_account=entry), settings) is None
