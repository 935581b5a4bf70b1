"""Rollback as an operator runs it: `flywheel rollback` moves the champion alias back and appends the
audit entry, on the workspace's sqlite store and through an MLflow tracking server. Through a server
the registry talks MLflow's REST API with urllib, so a fresh `flywheel rollback` process never imports
mlflow (that import alone takes seconds); the rules and the lock are the same either way."""

from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.config import REPO_ROOT, ConfigError, Settings, load_settings
from tasks.registry import Registry, RegistryInputError, RegistryRuleError

PASSED = {"gate": {"passed": True, "first_cycle": True, "checks": [], "failed": []},
          "suites": {"regression": {"behaviour": {"candidate": 0.9, "diff": None}}}}


def champions(settings: Settings, adapter: Path, count: int = 2) -> list[str]:
    """Register, approve and promote `count` versions in turn: the last is champion, each records the
    one before it as previous champion."""
    registry = Registry(settings)
    versions = []
    for i in range(count):
        version = registry.register_canary(adapter, cycle_id=f"c{i + 1}", base_path=Path("/models/base"),
                                           base_digest="b" * 64, dataset_sha256="d" * 64, eval_report=PASSED)
        registry.review(version, decision="approve", reviewer="ana", comment="ok")
        registry.promote(version)
        versions.append(version)
    return versions


def champion_seen_by(uri: str, name: str) -> str:
    """The champion as another MLflow client (e.g. a serving process) resolves it; "base" without one."""
    from mlflow import MlflowClient

    aliases = MlflowClient(uri, uri).get_registered_model(name).aliases
    return str(aliases["champion"]) if "champion" in aliases else "base"


def assert_consistent(registry: Registry) -> None:
    """The champion alias is the last champion move's target, the moves form a chain, no seq is lost."""
    audit = registry.audit()
    moves = [e for e in audit if e["alias"] == "champion"]
    assert champion_seen_by(registry.uri, registry.name) == moves[-1]["to"]
    for before, after in zip(moves, moves[1:]):
        assert after["from"] == before["to"], moves
    assert [e["seq"] for e in audit] == list(range(1, len(audit) + 1))


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------- sqlite store


def test_cli_rollback_moves_the_champion_back_and_records_it(tmp_path: Path, template_db: Path, adapter: Path) -> None:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    settings = load_settings(None, {"paths.workspace": str(tmp_path)})
    v1, v2 = champions(settings, adapter)
    runner = CliRunner()

    result = runner.invoke(app, ["rollback", "--workspace", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    moved = last_json(result.stdout)
    assert (moved["from"], moved["to"]) == (v2, v1)
    registry = Registry(settings)
    assert champion_seen_by(registry.uri, registry.name) == v1
    last = registry.audit()[-1]
    assert (last["action"], last["alias"], last["from"], last["to"]) == ("rollback", "champion", v2, v1)

    forward = runner.invoke(app, ["rollback", "--workspace", str(tmp_path), "--to", v2, "--json"])
    assert forward.exit_code == 0, forward.output
    assert champion_seen_by(registry.uri, registry.name) == v2
    assert_consistent(registry)


def test_cli_rollback_after_the_first_promotion_serves_the_base_model(tmp_path: Path, template_db: Path,
                                                                      adapter: Path) -> None:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    settings = load_settings(None, {"paths.workspace": str(tmp_path)})
    (v1,) = champions(settings, adapter, 1)
    runner = CliRunner()

    result = runner.invoke(app, ["rollback", "--workspace", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert last_json(result.stdout)["from"] == v1 and last_json(result.stdout)["to"] == "base"
    registry = Registry(settings)
    assert champion_seen_by(registry.uri, registry.name) == "base" and registry.status()["champion"] is None
    last = registry.audit()[-1]
    assert (last["action"], last["from"], last["to"]) == ("rollback", v1, "base")
    status = runner.invoke(app, ["registry", "status", "--workspace", str(tmp_path)])
    assert "champion: none (the base model is served, no adapter)" in status.stdout

    refused = runner.invoke(app, ["rollback", "--workspace", str(tmp_path), "--json"])
    assert refused.exit_code == 1 and "the base model is served" in refused.output
    assert registry.audit()[-1]["seq"] == last["seq"]
    back = runner.invoke(app, ["rollback", "--workspace", str(tmp_path), "--to", v1, "--json"])
    assert back.exit_code == 0 and last_json(back.stdout)["to"] == v1
    assert_consistent(registry)


def test_cli_rollback_to_a_rejected_version_needs_an_override(tmp_path: Path, template_db: Path, adapter: Path) -> None:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    settings = load_settings(None, {"paths.workspace": str(tmp_path)})
    v1, v2 = champions(settings, adapter)
    runner = CliRunner()
    ws = ["--workspace", str(tmp_path), "--json"]
    assert runner.invoke(app, ["rollback", *ws]).exit_code == 0
    assert runner.invoke(app, ["reject", v2, "--reviewer", "bo", "--comment", "leaks order ids", *ws]).exit_code == 0

    refused = runner.invoke(app, ["rollback", "--to", v2, *ws])
    assert refused.exit_code == 1 and "--override-reason" in refused.output
    registry = Registry(settings)
    assert champion_seen_by(registry.uri, registry.name) == v1
    restored = runner.invoke(app, ["rollback", "--to", v2, "--reviewer", "lead",
                                   "--override-reason", "v1 fails the new payment flow", *ws])
    assert restored.exit_code == 0, restored.output
    assert champion_seen_by(registry.uri, registry.name) == v2
    assert registry.audit()[-1]["details"]["override"]["reviewer"] == "lead"
    assert_consistent(registry)


# ---------------------------------------------------------------------------- tracking server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, template_db: Path):
    """`mlflow server` on a sqlite store in its own workspace (as `flywheel stack up` runs it); yields
    (workspace, url). Each test uses its own registered model name in it."""
    workspace = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(template_db, workspace / "mlflow.db")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with open(workspace / "server.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1", "--backend-store-uri", f"sqlite:///{workspace / 'mlflow.db'}",
                                 "--artifacts-destination", str(workspace / "mlartifacts")],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start: {(workspace / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield workspace, url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def server_settings(server, model: str) -> tuple[Settings, Settings, Path]:
    """(settings on the sqlite file, for set-up; settings through the server; a config file naming it)."""
    workspace, url = server
    config = workspace / f"{model}.yaml"
    config.write_text(f"registry:\n  tracking_uri: {url}\n  model_name: {model}\n", encoding="utf-8")
    local = load_settings(None, {"paths.workspace": str(workspace), "registry.model_name": model})
    return local, load_settings(config, {"paths.workspace": str(workspace)}), config


# Runs the CLI in a fresh interpreter and reports whether mlflow got imported on the way.
_CLI_AND_IMPORTS = """
import sys
from flows.cli import main
sys.argv = ["flywheel", *sys.argv[1:]]
try:
    main()
finally:
    print("mlflow imported:", "mlflow" in sys.modules, file=sys.stderr)
"""


@pytest.mark.integration
def test_cli_rollback_through_a_server_moves_the_alias_without_importing_mlflow(server, adapter: Path) -> None:
    local, remote, config = server_settings(server, "cli-model")
    v1, v2 = champions(local, adapter)
    done = subprocess.run([sys.executable, "-c", _CLI_AND_IMPORTS, "rollback", "--config", str(config),
                           "--workspace", str(remote.workspace), "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mlflow imported: False" in done.stderr
    moved = last_json(done.stdout)
    assert (moved["from"], moved["to"]) == (v2, v1)
    registry = Registry(remote)
    assert champion_seen_by(server[1], "cli-model") == v1
    last = registry.audit()[-1]
    assert (last["action"], last["from"], last["to"]) == ("rollback", v2, v1)
    assert_consistent(registry)


@pytest.mark.integration
def test_rollback_rules_hold_through_a_server(server, adapter: Path) -> None:
    local, remote, _ = server_settings(server, "rules-model")
    v1, v2, v3 = champions(local, adapter, 3)
    registry = Registry(remote)
    assert registry.rollback()["to"] == v2
    with pytest.raises(RegistryRuleError, match="already the champion"):
        registry.rollback(to=v2)
    with pytest.raises(RegistryInputError, match="has no version"):
        registry.rollback(to="99")
    assert registry.rollback(to=v3)["to"] == v3
    assert registry.rollback(to=v1)["to"] == v1
    assert [(e["action"], e["to"]) for e in registry.audit() if e["alias"] == "champion"][-3:] == [
        ("rollback", v2), ("rollback", v3), ("rollback", v1)]
    assert_consistent(registry)
    # v1 replaced the base: going back from it removes the alias, through the REST path too
    assert registry.rollback()["to"] == "base"
    assert champion_seen_by(server[1], "rules-model") == "base"
    # a version rejected since it served needs a recorded override, written through the REST path
    Registry(local).review(v3, decision="reject", reviewer="bo", comment="tone")
    with pytest.raises(RegistryRuleError, match="--override-reason"):
        registry.rollback(to=v3)
    assert registry.rollback(to=v3, reviewer="lead", override_reason="incident: base answers worse")["to"] == v3
    assert Registry(local).status()["versions"][2]["review"]["decision"] == "restore"
    assert_consistent(registry)
    unknown = Registry(server_settings(server, "no-such-model")[1])
    with pytest.raises(RegistryRuleError, match="does not exist yet"):
        unknown.rollback()


@pytest.mark.integration
def test_concurrent_rollbacks_through_a_server_stay_consistent(server, adapter: Path) -> None:
    local, remote, _ = server_settings(server, "race-model")
    versions = champions(local, adapter, 3)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine = Registry(remote)  # its own client, as a separate process would have
        for _ in range(5):
            try:
                mine.rollback() if rng.random() < 0.4 else mine.rollback(to=rng.choice(versions))
            except RegistryRuleError:
                pass  # e.g. already the champion: refused, not a broken state
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    registry = Registry(remote)
    assert sum(e["action"] == "rollback" for e in registry.audit()) >= 6
    assert_consistent(registry)


# ------------------------------------------------------------------------- a server that is gone


def test_a_tracking_server_that_does_not_answer_fails_at_once_naming_the_key(tmp_path: Path) -> None:
    # e.g. a shell still pointed at a stack that was stopped: MLflow's own client would retry for minutes
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    config = tmp_path / "gone.yaml"
    config.write_text(f"registry:\n  tracking_uri: http://127.0.0.1:{port}\n", encoding="utf-8")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["rollback", "--config", str(config), "--workspace", str(tmp_path / "ws")])
    assert time.monotonic() - started < 60  # not MLflow's minutes of retries (a bound, not a speed target)
    assert isinstance(result.exception, ConfigError)
    message = str(result.exception)
    assert f"http://127.0.0.1:{port}" in message and "registry.tracking_uri" in message and "flywheel stack up" in message


def test_the_stack_config_points_flows_at_the_stacks_mlflow_server(tmp_path: Path) -> None:
    import yaml

    from flows.local_stack import stack_env

    mine = tmp_path / "mine.yaml"
    mine.write_text("signals:\n  reask_window_s: 45\n", encoding="utf-8")
    env = stack_env(tmp_path / "ws", mlflow_port=5123, config=mine)
    stacked = load_settings(Path(env["FLYWHEEL_CONFIG"]))
    assert stacked.registry.tracking_uri == "http://127.0.0.1:5123" == env["MLFLOW_UI_URL"]
    assert stacked.workspace == (tmp_path / "ws").resolve() and stacked.signals.reask_window_s == 45
    # a server the user named wins; without an MLflow server the workspace's own store stays
    mine.write_text("registry:\n  tracking_uri: https://mlflow.example.com\n", encoding="utf-8")
    named = yaml.safe_load(Path(stack_env(tmp_path / "ws", mlflow_port=5123, config=mine)["FLYWHEEL_CONFIG"]).read_text())
    assert named["registry"]["tracking_uri"] == "https://mlflow.example.com"
    assert load_settings(Path(stack_env(tmp_path / "ws", mlflow_port=None)["FLYWHEEL_CONFIG"])).registry.tracking_uri is None
