"""`audit` finds its cluster as kubectl does: flag, $KUBECONFIG, ~/.kube/config, in-cluster."""

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.toolkit.kubeconfig import KubeconfigError, configuration, find_source


def kubeconfig(path: Path, current: str, servers: dict[str, str]) -> Path:
    """A kubeconfig with one cluster, user and context per entry of `servers`."""
    document: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": n, "user": {"token": f"token-{n}"}} for n in servers],
        "contexts": [{"name": n, "context": {"cluster": n, "user": n}} for n in servers],
    }
    if current:
        document["current-context"] = current
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home directory, no $KUBECONFIG, not in a pod."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return home


def test_home_kube_config_is_used_without_flags(home: Path) -> None:
    kubeconfig(home / ".kube" / "config", "a", {"a": "https://a.example:6443"})
    assert configuration().host == "https://a.example:6443"


def test_context_picks_another_context(home: Path) -> None:
    kubeconfig(home / ".kube" / "config", "a", {"a": "https://a:1", "b": "https://b:2"})
    chosen = configuration(context="b")
    assert chosen.host == "https://b:2"
    assert chosen.api_key == {"BearerToken": "Bearer token-b"}


def test_kubeconfig_env_lists_files_that_are_merged(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig(home / ".kube" / "config", "home", {"home": "https://home:1"})
    first = kubeconfig(tmp_path / "one", "b", {"a": "https://a:1"})
    second = kubeconfig(tmp_path / "two", "", {"b": "https://b:2"})
    missing = tmp_path / "absent"
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(map(str, (first, missing, second))))
    # current-context from the first file, context b from the second; ~/.kube/config ignored.
    assert configuration().host == "https://b:2"
    assert configuration(context="a").host == "https://a:1"


def test_kubeconfig_flag_beats_the_environment(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "env", "e", {"e": "https://e:1"})))
    flag = kubeconfig(tmp_path / "flag", "f", {"f": "https://f:2"})
    assert configuration(str(flag)).host == "https://f:2"


def test_kube_api_replaces_the_server_and_keeps_the_credentials(home: Path) -> None:
    kubeconfig(home / ".kube" / "config", "a", {"a": "https://a:1"})
    chosen = configuration(api_url="https://other:6443")
    assert chosen.host == "https://other:6443"
    assert chosen.api_key == {"BearerToken": "Bearer token-a"}


def test_kube_api_alone_needs_no_kubeconfig(home: Path) -> None:
    assert configuration(api_url="https://127.0.0.1:1").host == "https://127.0.0.1:1"


def test_in_a_pod_without_kubeconfig_the_service_account_is_used(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert find_source("", os.environ, home).in_cluster
    with pytest.raises(KubeconfigError, match="in-cluster service account"):
        configuration()  # no token file on this machine: the error says what was tried
    with pytest.raises(KubeconfigError, match="--context"):
        configuration(context="a")


def test_no_configuration_anywhere_says_where_it_looked(home: Path) -> None:
    with pytest.raises(KubeconfigError) as caught:
        configuration()
    message = str(caught.value)
    assert "$KUBECONFIG" in message and str(home / ".kube" / "config") in message


def test_kubeconfig_env_naming_only_missing_files_is_an_error(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone"))
    with pytest.raises(KubeconfigError, match="gone"):
        configuration()


def test_unknown_context_is_one_clear_error(home: Path) -> None:
    kubeconfig(home / ".kube" / "config", "a", {"a": "https://a:1"})
    with pytest.raises(KubeconfigError, match="nope"):
        configuration(context="nope")
