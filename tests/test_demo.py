"""`make demo` for a person's own pods (issue 17 §5): `make demo-down` (python -m e2e.node.demo
down) removes everything `make demo` wrote under its state directory, the node's component logs
included, and the roles file adds a person's roles to the demo's STS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from e2e.node import demo


def test_demo_down_removes_the_logs_and_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "demo"
    (state / "logs").mkdir(parents=True)
    (state / "logs" / "kube-apiserver.log").write_text("...")
    for name in ("supervisor.log", "result.json", "roles.json"):
        (state / name).write_text("{}")
    monkeypatch.setattr(demo, "STATE", state)
    monkeypatch.setattr(demo, "PID_FILE", state / "supervisor.pid")
    monkeypatch.setattr(demo, "RESULT_FILE", state / "result.json")
    monkeypatch.setattr(demo, "LOG_FILE", state / "supervisor.log")
    monkeypatch.setattr(demo, "ROLES_FILE", state / "roles.json")
    monkeypatch.setenv("PIW_NODE_STATE_ROOT", str(tmp_path / "node-state"))

    assert demo.down() == 0

    assert not state.exists()


class _Sts:
    def __init__(self) -> None:
        self.roles: dict[str, Any] = {"arn:aws:iam::111122223333:role/demo": {"Statement": []}}


def _policy(provider: object, namespace: str, service_account: str) -> dict[str, Any]:
    return {"Statement": [{"sub": f"system:serviceaccount:{namespace}:{service_account}"}]}


def test_roles_file_adds_and_removes_a_persons_roles_next_to_the_demos(tmp_path: Path) -> None:
    path, sts = tmp_path / "roles.json", _Sts()
    roles = demo.RolesFile(path)
    shop = "arn:aws:iam::111122223333:role/shop-app"
    own = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow"}]}
    path.write_text(
        json.dumps(
            {
                shop: {"namespace": "shop", "serviceAccount": "app"},
                "arn:aws:iam::111122223333:role/own": own,
            }
        )
    )

    assert roles.sync(sts, None, _policy) is None

    assert sts.roles[shop] == _policy(None, "shop", "app")
    assert sts.roles["arn:aws:iam::111122223333:role/own"] == own
    assert "arn:aws:iam::111122223333:role/demo" in sts.roles

    path.write_text(json.dumps({shop: {"namespace": "shop", "serviceAccount": "web"}}) + " ")
    assert roles.sync(sts, None, _policy) is None
    assert sts.roles[shop] == _policy(None, "shop", "web")
    assert "arn:aws:iam::111122223333:role/own" not in sts.roles
    assert "arn:aws:iam::111122223333:role/demo" in sts.roles


@pytest.mark.parametrize(
    "text",
    ["{not json", "[]", '{"arn:aws:iam::111122223333:role/x": {"namespace": "shop"}}'],
)
def test_a_broken_roles_file_keeps_the_previous_roles_and_says_why(
    tmp_path: Path, text: str
) -> None:
    path, sts = tmp_path / "roles.json", _Sts()
    roles = demo.RolesFile(path)
    path.write_text(json.dumps({"arn:aws:iam::111122223333:role/a": {"Statement": []}}))
    assert roles.sync(sts, None, _policy) is None
    before = dict(sts.roles)

    path.write_text(text)
    error = roles.sync(sts, None, _policy)

    assert error is not None and str(path) in error
    assert sts.roles == before


def test_demo_up_prints_the_sts_address_and_the_roles_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    demo._print_result(
        {
            "reports": {},
            "kubeconfig": "/k",
            "netns": "/n",
            "kubectl": "kubectl",
            "logs": "/l",
            "sts": f"http://192.0.2.10:{demo.STS_PORT}",
            "roles_file": str(demo.ROLES_FILE),
        }
    )
    out = capsys.readouterr().out
    assert "AWS_ENDPOINT_URL_STS=http://192.0.2.10:4566" in out
    assert str(demo.ROLES_FILE) in out
