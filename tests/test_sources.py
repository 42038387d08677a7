"""Where identities come from, at their edges: the container-credentials file's odd documents,
a ConfigMap the API server could not represent, and refilling the cache after a clear."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from webhook.core.settings import MutationSettings
from webhook.sources.container_credentials import ContainerCredentialsError, parse_identities
from webhook.sources.kube import KubeSource
from webhook.sources.objects import ObjectsError, ObjectsSource
from webhook.sources.store import IdentityStore

from .builders import ROLE, admission_review, patch_of, pod, respond

ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"


class TestContainerCredentialsFile:
    """Upstream decodes the file into Go structs; we accept and refuse what it does."""

    @pytest.mark.parametrize(
        "content",
        [b"", b"null", b"{}", b'{"identities": null}', b'{"identities": []}', b" \n\t"],
    )
    def test_documents_that_clear_the_list(self, content: bytes) -> None:
        assert parse_identities(content) == frozenset()

    def test_field_names_match_case_insensitively_and_null_is_the_empty_string(self) -> None:
        content = b'{"Identities": [{"NAMESPACE": "ns", "serviceaccount": "sa"}, null,'
        content += b' {"namespace": null, "serviceAccount": "x"}]}'
        assert parse_identities(content) == {("ns", "sa"), ("", ""), ("", "x")}

    @pytest.mark.parametrize(
        "content",
        [
            b"not json",
            b"[]",
            b'"identities"',
            b'{"identities": {}}',
            b'{"identities": ""}',
            b'{"identities": 0}',
            b'{"identities": [1]}',
            b'{"identities": [{"namespace": 0, "serviceAccount": "sa"}]}',
            b'{"identities": [{"namespace": "ns", "serviceAccount": false}]}',
            b'{"identities": [], "other": NaN}',
            b'\xef\xbb\xbf{"identities": []}',  # a BOM: Go's decoder refuses it
            b'{"identities": []} {}',
        ],
    )
    def test_what_go_cannot_decode_is_an_error_so_the_previous_list_stays(
        self, content: bytes
    ) -> None:
        with pytest.raises(ContainerCredentialsError):
            parse_identities(content)

    def test_invalid_utf8_inside_a_string_is_replaced_as_go_does(self) -> None:
        content = b'{"identities": [{"namespace": "n\xffs", "serviceAccount": "sa"}]}'
        assert parse_identities(content) == {("n\ufffds", "sa")}


def _kube_source(store: IdentityStore, client: Any) -> KubeSource:
    return KubeSource(store, client, config_map_namespace="eks", resync_seconds=0)


def _config_map(config: str) -> dict[str, Any]:
    return {"metadata": {"name": "pod-identity-webhook"}, "data": {"config": config}}


class TestConfigMapTheAPIServerCouldNotRepresent:
    def test_an_expiration_past_64_bits_keeps_the_previous_entries_and_reviews_answer(
        self,
    ) -> None:
        store = IdentityStore(MutationSettings())
        source = _kube_source(store, client=None)
        good = {"default/app": {"RoleARN": ROLE, "TokenExpiration": 3600}}
        source._apply_config_map(_config_map(json.dumps(good)))
        bad = {"default/app": {"RoleARN": ROLE + "-new", "TokenExpiration": 2**64}}
        source._apply_config_map(_config_map(json.dumps(bad)))
        response = respond(admission_review(pod()), store)["response"]
        token_ops = [op for op in patch_of({"response": response}) if op["path"] == "/spec/volumes"]
        token = token_ops[0]["value"][0]["projected"]["sources"][0]["serviceAccountToken"]
        assert token["expirationSeconds"] == 3600
        env = [op["value"] for op in patch_of({"response": response}) if "/env" in op["path"]]
        assert {"name": "AWS_ROLE_ARN", "value": ROLE} in env[0]

    def test_an_int64_expiration_above_2_to_the_32_is_served_clamped_with_a_warning(
        self,
    ) -> None:
        store = IdentityStore(MutationSettings())
        source = _kube_source(store, client=None)
        entries = {"default/app": {"RoleARN": ROLE, "TokenExpiration": 2**63 - 1}}
        source._apply_config_map(_config_map(json.dumps(entries)))
        response = respond(admission_review(pod()), store)["response"]
        volumes = next(op for op in patch_of({"response": response}) if "volumes" in op["path"])
        assert orjson.dumps(volumes)  # encodable: no 500
        token = volumes["value"][0]["projected"]["sources"][0]["serviceAccountToken"]
        assert token["expirationSeconds"] == 2**32
        assert "ConfigMap" in response["warnings"][0]

    def test_an_objects_file_with_a_non_string_config_is_rejected(self, tmp_path: Path) -> None:
        objects = tmp_path / "objects.yaml"
        objects.write_text(
            "kind: ConfigMap\nmetadata: {name: pod-identity-webhook, namespace: eks}\n"
            "data:\n  config:\n    default/app: {RoleARN: x}\n"
        )
        with pytest.raises(ObjectsError, match="must be a string"):
            ObjectsSource([str(objects)], IdentityStore(MutationSettings()), "eks").load()


class _FakeAPI:
    """Serves a fixed ServiceAccount list and ConfigMap, counting the lists."""

    def __init__(self, accounts: dict[str, dict[str, str]], config: dict[str, Any]) -> None:
        self.accounts, self.config, self.lists = accounts, config, 0

    def get_json(self, path: str, query: Any = None, timeout: float = 30.0) -> Any:
        if path == "/api/v1/serviceaccounts":
            self.lists += 1
            items = [
                {"metadata": {"namespace": "default", "name": n, "annotations": a}}
                for n, a in self.accounts.items()
            ]
            return {"metadata": {"resourceVersion": "7"}, "items": items}
        assert path == "/api/v1/namespaces/eks/configmaps"
        return {"metadata": {}, "items": [_config_map(json.dumps(self.config))]}

    def get_bytes(self, path: str, query: Any = None, timeout: float = 30.0) -> bytes:
        return orjson.dumps(self.get_json(path, query, timeout))

    def get_chunks(self, path: str, query: Any = None, timeout: float = 30.0) -> Any:
        return iter([self.get_bytes(path, query, timeout)])


def _refilled(store: IdentityStore) -> None:
    thread = store.clear()
    assert isinstance(thread, threading.Thread)
    thread.join(10)
    assert not thread.is_alive()


class TestCacheClearRefills:
    def test_clearing_a_store_without_sources_just_empties_it(self) -> None:
        store = IdentityStore(MutationSettings())
        store.put_service_account("default", "app", {ROLE_ANNOTATION: ROLE})
        assert store.clear() is None
        assert store.service_account_count == 0

    def test_a_kubernetes_source_relists_service_accounts_and_the_config_map(self) -> None:
        store = IdentityStore(MutationSettings())
        api = _FakeAPI({"app": {ROLE_ANNOTATION: ROLE}}, {"default/cm": {"RoleARN": ROLE}})
        source = _kube_source(store, api)
        source.refill()  # what the watch loop's first list does
        assert api.lists == 1
        _refilled(store)
        assert api.lists == 2
        assert store.service_account_count == 1
        assert patch_of(respond(admission_review(pod()), store))
        assert patch_of(respond(admission_review(pod(sa="cm")), store))

    def test_used_stays_true_through_a_clear_and_is_false_before_any_account(self) -> None:
        store = IdentityStore(MutationSettings())
        assert store.used is False
        store.put_service_account("default", "app", None)
        assert store.used is True
        store.clear()
        assert store.service_account_count == 0 and store.used is True

    def test_an_objects_source_reloads_its_files(self, tmp_path: Path) -> None:
        objects = tmp_path / "objects.yaml"
        objects.write_text(
            "kind: ServiceAccount\nmetadata: {name: app, namespace: default, annotations: "
            f"{{{ROLE_ANNOTATION}: {ROLE}}}}}\n"
        )
        store = IdentityStore(MutationSettings())
        ObjectsSource([str(objects)], store, None).load()
        _refilled(store)
        assert store.service_account_count == 1
        assert patch_of(respond(admission_review(pod()), store))

    def test_a_failing_refill_is_logged_and_later_sources_still_refill(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = IdentityStore(MutationSettings())

        def broken() -> None:
            raise OSError("API server unreachable")

        store.add_refill("broken", broken)
        store.add_refill("working", lambda: store.put_service_account("default", "app", {}))
        _refilled(store)
        assert store.service_account_count == 1
        assert "unreachable" in caplog.text
