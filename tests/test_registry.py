"""Registry rules: registration with lineage, reviews, gate overrides, promotion, rollback, serialised
writers and the audit history. Each test gets its own `sqlite:///{tmp_path}/mlflow.db` (copied from one
migrated template: creating MLflow's tables takes seconds)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tasks.config import REPO_ROOT, Settings, load_settings
from tasks.registry import Registry, RegistryBusyError, RegistryRuleError

PASSED = {"gate": {"passed": True, "first_cycle": True, "checks": [], "failed": []},
          "suites": {"regression": {"behaviour": {"candidate": 0.9, "diff": None}}}}
FAILED = {"gate": {"passed": False, "first_cycle": False, "failed": ["regression.behaviour.max_drop"],
                   "checks": [{"suite": "regression", "metric": "behaviour", "kind": "max_drop", "value": -0.08,
                               "threshold": 0.05, "passed": False}]},
          "suites": {"regression": {"behaviour": {"candidate": 0.82, "diff": -0.08}}}}


def _settings(workspace: Path, **overrides) -> Settings:
    values = {"paths.workspace": str(workspace), "registry.tracking_uri": f"sqlite:///{workspace}/mlflow.db"}
    values.update(overrides)
    return load_settings(None, values)


@pytest.fixture()
def settings(tmp_path: Path, template_db: Path) -> Settings:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return _settings(tmp_path)


@pytest.fixture()
def registry(settings: Settings) -> Registry:
    return Registry(settings)


def register(registry: Registry, adapter: Path, cycle: str = "c1", report: dict = PASSED) -> str:
    return registry.register_canary(adapter, cycle_id=cycle, base_path=Path("/models/base"), base_digest="b" * 64,
                                    dataset_sha256="d" * 64, eval_report=report)


def approve(registry: Registry, version: str) -> None:
    registry.review(version, decision="approve", reviewer="ana", comment="looks good")


def champion_moves(registry: Registry) -> list[dict]:
    return [e for e in registry.audit() if e["alias"] == "champion"]


def assert_consistent(registry: Registry) -> None:
    """The champion alias equals the last move's target and the moves form a chain."""
    moves = champion_moves(registry)
    assert registry.status()["champion"] == (moves[-1]["to"] if moves else None)
    previous = None
    for move in moves:
        assert move["from"] == previous, moves
        previous = move["to"]
    seqs = [e["seq"] for e in registry.audit()]
    assert seqs == list(range(1, len(seqs) + 1))


# ------------------------------------------------------------------------------------ register


def test_register_canary_records_lineage_gate_and_alias(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    status = registry.status()
    assert status["canary"] == version and status["champion"] is None
    entry = status["versions"][0]
    assert entry["version"] == version and entry["aliases"] == ["canary"] and entry["cycle_id"] == "c1"
    assert entry["gate"] == "passed" and entry["review"] is None and entry["created"]
    tags = registry.client.get_model_version(registry.name, version).tags
    assert tags["base_model"] == "/models/base" and tags["base_digest"] == "b" * 64 and tags["dataset_sha256"] == "d" * 64
    assert json.loads(tags["eval_summary"]) == {"regression": {"behaviour": [0.9, None]}}
    assert json.loads(tags["gate_report"])["passed"] is True and len(tags["adapter_sha256"]) == 64
    # Only the adapter is stored, byte for byte; the base is a reference.
    stored = registry.adapter_path(version)
    assert sorted(p.name for p in stored.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert (stored / "adapter_model.safetensors").read_bytes() == (adapter / "adapter_model.safetensors").read_bytes()
    assert str(stored).startswith(str(registry.settings.workspace))  # artifacts under <workspace>/mlartifacts
    mv = registry.client.get_model_version_by_alias(registry.name, "canary")
    assert str(mv.version) == version
    assert registry.model_uri("champion") == f"models:/{registry.name}@champion"
    requirements = (stored.parent.parent / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "peft==" in requirements and "torchvision" not in requirements
    assert [(e["action"], e["alias"], e["to"]) for e in registry.audit()] == [("register", "canary", version)]


def test_register_refuses_a_folder_without_an_adapter(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adapter_config.json"):
        register(registry, tmp_path)


# ------------------------------------------------------------------------------ review rules


def test_promotion_is_refused_without_approval(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    with pytest.raises(RegistryRuleError, match="has no review"):
        registry.promote(version)
    registry.review(version, decision="reject", reviewer="bo", comment="answers are too long")
    with pytest.raises(RegistryRuleError, match="'reject' by bo"):
        registry.promote(version)
    assert registry.status()["canary"] is None  # a rejected canary is no canary
    assert registry.status()["champion"] is None
    with pytest.raises(RegistryRuleError, match="reviewer is required"):
        registry.review(version, decision="approve", reviewer="  ", comment="")
    with pytest.raises(RegistryRuleError, match="no version '99'"):
        registry.review("99", decision="approve", reviewer="ana", comment="")
    approve(registry, version)  # the latest decision counts
    result = registry.promote(version)
    assert result["from"] is None and result["to"] == version and result["seconds"] < 5
    review = registry.status()["versions"][0]["review"]
    assert review["decision"] == "approve" and review["reviewer"] == "ana" and review["comment"] == "looks good"
    assert review["time"].endswith("+00:00")
    assert [e["action"] for e in registry.audit()] == ["register", "reject", "approve", "promote"]


def test_failed_gate_needs_a_recorded_override(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter, report=FAILED)
    approve(registry, version)
    assert registry.status()["versions"][0]["gate"] == "failed"
    with pytest.raises(RegistryRuleError, match="failed its evaluation gate"):
        registry.promote(version)
    with pytest.raises(RegistryRuleError, match="reason is required"):
        registry.override_gate(version, reviewer="lead", reason="")
    with pytest.raises(RegistryRuleError, match="reviewer is required"):
        registry.override_gate(version, reviewer="", reason="known flaky item")
    override = registry.override_gate(version, reviewer="lead", reason="the drop is 2 paraphrases of one retired product")
    assert override["reviewer"] == "lead" and override["gate"] == "failed"
    assert registry.promote(version)["to"] == version
    recorded = [e for e in registry.audit() if e["action"] == "override_gate"][0]
    assert recorded["actor"] == "lead" and "retired product" in recorded["details"]["reason"]
    assert registry.audit()[-1]["details"]["override"]["reviewer"] == "lead"


def test_a_passed_gate_has_nothing_to_override(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    with pytest.raises(RegistryRuleError, match="nothing to override"):
        registry.override_gate(version, reviewer="lead", reason="because")


# --------------------------------------------------------------------------- promote / rollback


def test_promote_records_the_previous_champion_and_rollback_returns_to_it(registry: Registry, adapter: Path) -> None:
    v1 = register(registry, adapter, "c1")
    approve(registry, v1)
    registry.promote(v1)
    v2 = register(registry, adapter, "c2")
    assert registry.status()["canary"] == v2
    approve(registry, v2)
    promoted = registry.promote(v2)
    assert (promoted["from"], promoted["to"]) == (v1, v2)
    status = registry.status()
    assert status["champion"] == v2 and status["canary"] is None
    assert status["versions"][1]["previous_champion"] == v1
    assert registry.promote(v2)["changed"] is False  # idempotent: no new audit entry

    back = registry.rollback()
    assert (back["from"], back["to"]) == (v2, v1) and back["seconds"] < 5
    assert str(registry.client.get_model_version_by_alias(registry.name, "champion").version) == v1
    with pytest.raises(RegistryRuleError, match="no previous champion"):
        registry.rollback()
    forward = registry.rollback(to=v2)  # an earlier champion may be restored explicitly
    assert (forward["from"], forward["to"]) == (v1, v2)
    v3 = register(registry, adapter, "c3")
    approve(registry, v3)
    with pytest.raises(RegistryRuleError, match="never champion"):
        registry.rollback(to=v3)
    with pytest.raises(RegistryRuleError, match="already the champion"):
        registry.rollback(to=v2)
    assert [(e["action"], e["from"], e["to"]) for e in champion_moves(registry)] == [
        ("promote", None, v1), ("promote", v1, v2), ("rollback", v2, v1), ("rollback", v1, v2)]
    assert_consistent(registry)


def test_rollback_without_champion_is_refused(registry: Registry, adapter: Path) -> None:
    with pytest.raises(RegistryRuleError):
        registry.rollback()
    register(registry, adapter)
    with pytest.raises(RegistryRuleError, match="no champion"):
        registry.rollback()


def test_alias_moved_outside_the_registry_is_reconciled_in_the_audit(registry: Registry, adapter: Path) -> None:
    v1, v2 = register(registry, adapter, "c1"), register(registry, adapter, "c2")
    for v in (v1, v2):
        approve(registry, v)
    registry.promote(v1)
    registry.client.set_registered_model_alias(registry.name, "champion", v2)  # someone used the MLflow UI
    registry.promote(v1)
    assert [e["action"] for e in champion_moves(registry)] == ["promote", "reconcile", "promote"]
    assert_consistent(registry)


# ----------------------------------------------------------------------------------- concurrency


def test_concurrent_promote_and_rollback_leave_one_consistent_state(settings: Settings, adapter: Path) -> None:
    setup = Registry(settings)
    versions = [register(setup, adapter, f"c{i}") for i in range(4)]
    for v in versions:
        approve(setup, v)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine = Registry(settings)  # its own client, as a separate process would have
        for _ in range(5):
            try:
                if rng.random() < 0.6:
                    mine.promote(rng.choice(versions))
                else:
                    mine.rollback()
            except RegistryRuleError:
                pass  # e.g. nothing to roll back to yet: refused, not a broken state
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(champion_moves(setup)) >= 8
    assert_consistent(setup)
    champion = setup.status()["champion"]
    assert str(setup.client.get_model_version_by_alias(setup.name, "champion").version) == champion


_PROCESS_WORKER = """
import random, sys
from tasks.config import load_settings
from tasks.registry import Registry, RegistryRuleError
workspace, seed, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
settings = load_settings(None, {"paths.workspace": workspace, "registry.tracking_uri": f"sqlite:///{workspace}/mlflow.db"})
registry, rng = Registry(settings), random.Random(seed)
for _ in range(6):
    try:
        registry.promote(rng.choice(versions)) if rng.random() < 0.6 else registry.rollback()
    except RegistryRuleError:
        pass
"""


@pytest.mark.slow
def test_concurrent_processes_leave_one_consistent_state(settings: Settings, adapter: Path) -> None:
    setup = Registry(settings)
    versions = [register(setup, adapter, f"c{i}") for i in range(3)]
    for v in versions:
        approve(setup, v)
    procs = [subprocess.Popen([sys.executable, "-c", _PROCESS_WORKER, str(settings.workspace), str(seed), ",".join(versions)],
                              cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True) for seed in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    assert len(champion_moves(setup)) >= 3
    assert_consistent(setup)


def test_a_held_lock_makes_writers_wait_then_give_up(tmp_path: Path, template_db: Path, adapter: Path) -> None:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    registry = Registry(_settings(tmp_path, **{"registry.lock_timeout_s": 0.2}))
    version = register(registry, adapter)
    approve(registry, version)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with registry._locked():
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        with pytest.raises(RegistryBusyError, match="registry.lock_timeout_s"):
            registry.promote(version)
    finally:
        release.set()
        holder.join()
    assert registry.promote(version)["to"] == version
