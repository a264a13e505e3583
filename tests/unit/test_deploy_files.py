"""Deploy files are validated, not run (no container engine here): they parse, and every
command and setting they use exists in this product."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from triage.cli import app
from triage.config import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTING_NAMES = {f"TRIAGE_{name.upper()}" for name in Settings.model_fields}


def _leaf_commands() -> set[tuple[str, ...]]:
    """Every runnable command path of the `triage` CLI, e.g. ("db", "upgrade")."""
    leaves: set[tuple[str, ...]] = set()

    def walk(cmd: Any, prefix: tuple[str, ...]) -> None:
        if getattr(cmd, "commands", None):
            for name, sub in cmd.commands.items():
                walk(sub, (*prefix, name))
        else:
            leaves.add(prefix)

    walk(typer.main.get_command(app), ())
    return leaves


def _assert_command_exists(args: list[str], where: str) -> None:
    words = tuple(a for a in args if not a.startswith("-"))
    assert any(words[: len(p)] == p for p in _leaf_commands()), (
        f"{where}: `triage {' '.join(args)}` is not a triage command"
    )


def test_command_walker_knows_real_commands_and_rejects_others() -> None:
    leaves = _leaf_commands()
    assert {("db", "upgrade"), ("serve",), ("exams", "show")} <= leaves
    with pytest.raises(AssertionError):
        _assert_command_exists(["no-such-command"], "self-test")


def _yaml_docs() -> list[tuple[Path, dict[str, object]]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_yaml_file_parses_and_k8s_objects_have_kind_and_name() -> None:
    docs = _yaml_docs()
    assert docs
    for path, doc in docs:
        if path.parent.name == "k8s":
            assert doc.get("apiVersion") and doc.get("kind"), path
            assert doc["metadata"]["name"], path  # type: ignore[index]


def test_compose_services_run_existing_commands_with_known_settings() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if "build" in service:
            _assert_command_exists(service["command"], f"compose service {name}")
        for key in service.get("environment", {}) or {}:
            if key.startswith("TRIAGE_"):
                assert key in SETTING_NAMES, f"compose service {name}: unknown setting {key}"


def test_kubernetes_containers_run_existing_commands() -> None:
    for path, doc in _yaml_docs():
        if doc.get("kind") != "Deployment":
            continue
        spec = doc["spec"]["template"]["spec"]  # type: ignore[index]
        for container in spec.get("initContainers", []) + spec["containers"]:
            _assert_command_exists(container["args"], f"{path.name}:{container['name']}")
    config = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    assert set(config["data"]) <= SETTING_NAMES


@pytest.mark.parametrize("unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_units_start_existing_commands(unit: Path) -> None:
    text = unit.read_text()
    assert re.search(r"^Restart=", text, re.M), f"{unit.name}: no Restart= policy"
    for line in re.findall(r"^ExecStart(?:Pre)?=(.+)$", text, re.M):
        argv = shlex.split(line)
        assert argv[0].endswith("/triage"), line
        _assert_command_exists(argv[1:], unit.name)


def test_example_environment_uses_only_known_settings() -> None:
    for line in (DEPLOY / "systemd" / "triage.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            assert line.split("=", 1)[0] in SETTING_NAMES, line
