"""Registry rules: registration with lineage, reviews, gate overrides, promotion, rollback, serialised
writers and the audit history. Each test gets its own `sqlite:///{tmp_path}/mlflow.db` (copied from one
migrated template: creating MLflow's tables takes seconds)."""

from __future__ import annotations

import json
import random
import shutil
import sys
import threading
from pathlib import Path

import pytest

from tasks.config import Settings, load_settings
from tasks.registry import Registry, RegistryBusyError, RegistryInputError, RegistryRuleError

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
    assert (registry.status()["champion"] or "base") == (moves[-1]["to"] if moves else "base")
    previous = "base"
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


def test_promotion_needs_an_approval(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    with pytest.raises(RegistryRuleError, match="has no review"):
        registry.promote(version)
    approve(registry, version)
    result = registry.promote(version)
    assert result["from"] == "base" and result["to"] == version and result["seconds"] < 5
    review = registry.status()["versions"][0]["review"]
    assert review["decision"] == "approve" and review["reviewer"] == "ana" and review["comment"] == "looks good"
    assert review["time"].endswith("+00:00")
    assert [e["action"] for e in registry.audit()] == ["register", "approve", "promote"]


def test_a_rejection_is_final(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    registry.review(version, decision="reject", reviewer="bo", comment="answers are too long")
    assert registry.status()["canary"] is None  # a rejected canary is no canary
    with pytest.raises(RegistryRuleError, match="rejected by bo .*a rejection is final: register the adapter again"):
        approve(registry, version)
    with pytest.raises(RegistryRuleError, match="rejection is final"):
        registry.promote(version)
    assert registry.status()["champion"] is None
    assert [r["decision"] for r in registry.status()["versions"][0]["reviews"]] == ["reject"]
    again = register(registry, adapter, "c1-again")  # the way to try again: a new version
    approve(registry, again)
    assert registry.promote(again)["to"] == again


def test_every_review_is_kept(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    registry.review(version, decision="approve", reviewer="ana", comment="regression flat")
    registry.review(version, decision="approve", reviewer="bo", comment="new products answered")
    entry = registry.status()["versions"][0]
    assert [(r["reviewer"], r["comment"]) for r in entry["reviews"]] == [("ana", "regression flat"),
                                                                          ("bo", "new products answered")]
    assert entry["review"]["reviewer"] == "bo"  # the latest counts
    registry.review(version, decision="reject", reviewer="cy", comment="leaks an order id")
    assert [r["decision"] for r in registry.status()["versions"][0]["reviews"]] == ["approve", "approve", "reject"]
    with pytest.raises(RegistryRuleError, match="rejected by cy"):
        registry.promote(version)


def test_a_review_from_before_every_review_was_kept_still_counts(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    old = {"decision": "reject", "reviewer": "bo", "time": "2026-01-05T10:00:00.000+00:00", "comment": "too long"}
    registry.client.set_model_version_tag(registry.name, version, "review", json.dumps(old))  # the one tag of before
    assert registry.status()["versions"][0]["reviews"] == [old]
    with pytest.raises(RegistryRuleError, match="rejected by bo"):
        approve(registry, version)


def test_the_serving_champion_cannot_be_rejected(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    approve(registry, version)
    registry.promote(version)
    with pytest.raises(RegistryRuleError, match="is the champion.*roll it back first"):
        registry.review(version, decision="reject", reviewer="bo", comment="too late")
    registry.rollback()
    registry.review(version, decision="reject", reviewer="bo", comment="rolled back, then rejected")
    assert registry.status()["versions"][0]["review"]["decision"] == "reject"


def test_bad_input_is_an_input_error(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter)
    with pytest.raises(RegistryInputError, match="reviewer is required"):
        registry.review(version, decision="approve", reviewer="  ", comment="")
    with pytest.raises(RegistryInputError, match="no version 99"):
        registry.review("99", decision="approve", reviewer="ana", comment="")
    with pytest.raises(RegistryInputError, match="'abc' is not a model version"):
        registry.promote("abc")
    with pytest.raises(RegistryInputError, match="decision must be"):
        registry.review(version, decision="maybe", reviewer="ana", comment="")  # type: ignore[arg-type]
    assert registry.review(f"v{version}", decision="approve", reviewer="ana", comment="")["version"] == version


def test_failed_gate_needs_a_recorded_override(registry: Registry, adapter: Path) -> None:
    version = register(registry, adapter, report=FAILED)
    approve(registry, version)
    assert registry.status()["versions"][0]["gate"] == "failed"
    with pytest.raises(RegistryRuleError, match="failed its evaluation gate") as refused:
        registry.promote(version)
    # the fix a user can type, not a Python method
    assert f"`flywheel registry override {version} --reviewer NAME --reason TEXT`" in str(refused.value)
    assert "Registry." not in str(refused.value)
    with pytest.raises(RegistryInputError, match="reason is required"):
        registry.override_gate(version, reviewer="lead", reason="")
    with pytest.raises(RegistryInputError, match="reviewer is required"):
        registry.override_gate(version, reviewer="", reason="known flaky item")
    override = registry.override_gate(version, reviewer="lead", reason="the drop is 2 paraphrases of one retired product")
    assert override["reviewer"] == "lead" and override["gate"] == "failed"
    assert registry.promote(version)["to"] == version
    recorded = [e for e in registry.audit() if e["action"] == "override_gate"][0]
    assert recorded["actor"] == "lead" and "retired product" in recorded["details"]["reason"]
    assert registry.audit()[-1]["details"]["override"]["reviewer"] == "lead"


def test_the_same_person_may_not_approve_and_override_a_gate(registry: Registry, adapter: Path) -> None:
    first = register(registry, adapter, "c1", report=FAILED)
    approve(registry, first)  # by ana
    with pytest.raises(RegistryRuleError, match="Ana would both approve .*review.require_distinct_override"):
        registry.override_gate(first, reviewer="Ana", reason="flaky item")  # names compare without case
    registry.override_gate(first, reviewer="lead", reason="flaky item")
    assert registry.promote(first)["to"] == first

    second = register(registry, adapter, "c2", report=FAILED)
    registry.override_gate(second, reviewer="lead", reason="flaky item")
    with pytest.raises(RegistryRuleError, match="lead would both approve"):
        registry.review(second, decision="approve", reviewer="lead", comment="mine")
    assert registry.status()["versions"][1]["reviews"] == []  # refused answers leave no review behind


def test_distinct_override_can_be_turned_off(tmp_path: Path, template_db: Path, adapter: Path) -> None:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    registry = Registry(_settings(tmp_path, **{"review.require_distinct_override": False}))
    version = register(registry, adapter, report=FAILED)
    approve(registry, version)
    registry.override_gate(version, reviewer="ana", reason="flaky item")
    assert registry.promote(version)["to"] == version
    # The rule also holds at promotion, for reviews recorded while it was off.
    other = register(registry, adapter, "c2", report=FAILED)
    approve(registry, other)
    registry.override_gate(other, reviewer="ana", reason="flaky item")
    strict = Registry(_settings(tmp_path))
    with pytest.raises(RegistryRuleError, match="another reviewer overrides the gate"):
        strict.promote(other)
    strict.override_gate(other, reviewer="lead", reason="flaky item, checked again")
    assert strict.promote(other)["to"] == other


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
    forward = registry.rollback(to=v2)  # an earlier champion may be restored explicitly
    assert (forward["from"], forward["to"]) == (v1, v2)
    v3 = register(registry, adapter, "c3")
    approve(registry, v3)
    with pytest.raises(RegistryRuleError, match="never champion"):
        registry.rollback(to=v3)
    with pytest.raises(RegistryRuleError, match="already the champion"):
        registry.rollback(to=v2)
    assert [(e["action"], e["from"], e["to"]) for e in champion_moves(registry)] == [
        ("promote", "base", v1), ("promote", v1, v2), ("rollback", v2, v1), ("rollback", v1, v2)]
    assert_consistent(registry)


def test_rolling_back_the_first_champion_serves_the_base_model(registry: Registry, adapter: Path) -> None:
    v1 = register(registry, adapter, "c1")
    approve(registry, v1)
    registry.promote(v1)
    back = registry.rollback()
    assert (back["from"], back["to"]) == (v1, "base")
    assert registry.status()["champion"] is None  # no champion alias: the base model, no adapter
    with pytest.raises(Exception, match="champion"):
        registry.client.get_model_version_by_alias(registry.name, "champion")
    last = registry.audit()[-1]
    assert (last["action"], last["alias"], last["from"], last["to"], last["version"]) == ("rollback", "champion", v1, "base", None)
    with pytest.raises(RegistryRuleError, match="no champion to roll back from: the base model is served"):
        registry.rollback()
    with pytest.raises(RegistryRuleError, match="base model is already served"):
        registry.rollback(to="base")
    assert registry.rollback(to=v1)["to"] == v1  # back to an earlier champion, from the base
    assert registry.rollback(to="base")["to"] == "base"  # the base, named
    v2 = register(registry, adapter, "c2")
    approve(registry, v2)
    assert registry.promote(v2)["from"] == "base"
    assert registry.rollback()["to"] == "base"  # v2 replaced the base: that is where it goes back to
    assert [(e["from"], e["to"]) for e in champion_moves(registry)] == [
        ("base", v1), (v1, "base"), ("base", v1), (v1, "base"), ("base", v2), (v2, "base")]
    assert_consistent(registry)


def test_rollback_to_a_version_rejected_since_it_served_needs_a_recorded_override(registry: Registry,
                                                                                    adapter: Path) -> None:
    v1, v2 = register(registry, adapter, "c1"), register(registry, adapter, "c2")
    for version in (v1, v2):
        approve(registry, version)
        registry.promote(version)
    registry.rollback()  # v2 -> v1
    registry.review(v2, decision="reject", reviewer="bo", comment="leaks order ids")
    with pytest.raises(RegistryRuleError, match="rejected by bo.*--override-reason") as refused:
        registry.rollback(to=v2)
    assert f"flywheel rollback --to {v2} --reviewer NAME --override-reason TEXT" in str(refused.value)
    assert registry.status()["champion"] == v1
    with pytest.raises(RegistryInputError, match="reviewer is required"):
        registry.rollback(to=v2, override_reason="v1 is worse today")
    with pytest.raises(RegistryInputError, match="reason is required: pass --override-reason"):
        registry.rollback(to=v2, reviewer="lead", override_reason=" ")
    with pytest.raises(RegistryInputError, match="no rejection to override"):
        registry.rollback(to="base", reviewer="lead", override_reason="no need")

    moved = registry.rollback(to=v2, reviewer="lead", override_reason="v1 is worse today")
    assert (moved["from"], moved["to"]) == (v1, v2) and registry.status()["champion"] == v2
    latest = registry.status()["versions"][1]["review"]
    assert (latest["decision"], latest["reviewer"], latest["comment"]) == ("restore", "lead", "v1 is worse today")
    entry = registry.audit()[-1]
    assert entry["action"] == "rollback" and entry["actor"] == "lead"
    assert entry["details"]["override"]["comment"] == "v1 is worse today"
    registry.rollback(to=v1)
    with pytest.raises(RegistryRuleError, match="rejection is final"):
        registry.promote(v2)  # an override restores service once; it is no approval
    with pytest.raises(RegistryRuleError, match="--override-reason"):
        registry.rollback(to=v2)  # and each return needs its own
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


# ---------------------------------------------------------------------------------------- the CLI


def flywheel(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """Run the console script's entry point as a user's shell does: (exit code, stdout, stderr)."""
    from flows.cli import main

    monkeypatch.setattr(sys, "argv", ["flywheel", *args])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1 if done.code else 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_reject_then_approve_then_promote_leaves_the_champion_alone(settings: Settings, adapter: Path, capsys,
                                                                         monkeypatch) -> None:
    registry = Registry(settings)
    v1 = register(registry, adapter, "c1")
    approve(registry, v1)
    registry.promote(v1)
    v2 = register(registry, adapter, "c2")
    ws = ["--workspace", str(settings.workspace)]
    assert flywheel(capsys, monkeypatch, "reject", v2, "--reviewer", "bo", "--comment", "too long", *ws)[0] == 0
    code, _, err = flywheel(capsys, monkeypatch, "approve", v2, "--reviewer", "ana", "--comment", "fine", *ws)
    assert code == 1 and "a rejection is final" in err
    code, _, err = flywheel(capsys, monkeypatch, "promote", v2, *ws)
    assert code == 1 and "a rejection is final" in err
    assert registry.status()["champion"] == v1


def test_cli_bad_input_exits_2_naming_the_fix(settings: Settings, adapter: Path, capsys, monkeypatch) -> None:
    registry = Registry(settings)
    version = register(registry, adapter, report=FAILED)
    ws = ["--workspace", str(settings.workspace)]
    for args in (["approve", "99", "--reviewer", "ana", "--comment", "ok"],
                 ["approve", "abc", "--reviewer", "ana", "--comment", "ok"],
                 ["approve", version, "--reviewer", "  ", "--comment", "ok"],
                 ["reject", version, "--reviewer", "", "--comment", "no"],
                 ["registry", "override", version, "--reviewer", "lead", "--reason", " "],
                 ["promote", "99"], ["promote", "abc"], ["rollback", "--to", "abc"]):
        code, _, err = flywheel(capsys, monkeypatch, *args, *ws)
        assert code == 2, (args, err)
        assert "flywheel registry status" in err or "is required: pass --" in err, (args, err)
    assert [e["action"] for e in registry.audit()] == ["register"]  # nothing was recorded
    approve(registry, version)
    code, _, err = flywheel(capsys, monkeypatch, "promote", version, *ws)
    assert code == 1 and f"flywheel registry override {version} --reviewer NAME --reason TEXT" in err
    code, _, err = flywheel(capsys, monkeypatch, "registry", "override", version, "--reviewer", "ana", "--reason", "x", *ws)
    assert code == 1 and "review.require_distinct_override" in err


# ------------------------------------------------------------------------------------ audit


def test_the_audit_names_people_and_lives_in_one_readable_tag(registry: Registry, adapter: Path, monkeypatch) -> None:
    monkeypatch.delenv("FLYWHEEL_ACTOR", raising=False)
    v1 = register(registry, adapter)
    registry.review(v1, decision="approve", reviewer="alice", comment="fixes the launch")
    registry.promote(v1)  # follows alice's approval
    v2 = registry.register_canary(adapter, cycle_id="c2", base_path=Path("/models/base"), base_digest="b" * 64,
                                  dataset_sha256="d" * 64, eval_report=PASSED, actor="retraining-bot")
    registry.review(v2, decision="approve", reviewer="bob", comment="ok")
    registry.promote(v2, actor="carol")
    registry.rollback(actor="dave")
    actors = [(e["action"], e["actor"]) for e in registry.audit()]
    assert actors[0][1].startswith("unattributed (OS user ")  # nobody named: said so, never passed off as a person
    assert actors[1:] == [("approve", "alice"), ("promote", "alice"), ("register", "retraining-bot"),
                          ("approve", "bob"), ("promote", "carol"), ("rollback", "dave")]
    tags = registry.client.get_registered_model(registry.name).tags
    assert not [k for k in tags if k.startswith("audit.")]  # no tag per entry
    assert [json.loads(line)["seq"] for line in tags["audit"].splitlines()] == list(range(1, 8))
    assert tags["audit_head"].startswith("#7 ") and tags["audit_head"].endswith(f"rollback: champion v{v2} -> v{v1} by dave")
    assert_consistent(registry)


def test_a_configured_identity_stands_in_when_nobody_is_named(tmp_path: Path, template_db: Path, adapter: Path,
                                                               monkeypatch) -> None:
    shutil.copy(template_db, tmp_path / "mlflow.db")
    monkeypatch.setenv("FLYWHEEL_ACTOR", "env-person")
    assert Registry(_settings(tmp_path)).audit() == []
    register(Registry(_settings(tmp_path)), adapter)
    configured = Registry(_settings(tmp_path, **{"registry.actor": "ml-platform team"}))
    register(configured, adapter, "c2")
    assert [e["actor"] for e in configured.audit()] == ["env-person", "ml-platform team"]


def test_an_older_history_of_one_tag_per_entry_stays_the_chains_start(registry: Registry, adapter: Path,
                                                                      monkeypatch) -> None:
    import tasks.registry as module

    v1 = register(registry, adapter)
    tags = registry.client.get_registered_model(registry.name).tags
    old = json.loads(tags["audit"])  # rewrite the first entry as histories were written before
    registry.client.set_registered_model_tag(registry.name, "audit.000001", json.dumps(old))
    registry.client.delete_registered_model_tag(registry.name, "audit")
    monkeypatch.setattr(module, "AUDIT_TAG_CHARS", 400)  # and make the tag overflow into archives
    approve(registry, v1)
    registry.promote(v1)
    registry.rollback()
    assert [e["seq"] for e in registry.audit()] == [1, 2, 3, 4]
    assert [e["action"] for e in registry.audit()] == ["register", "approve", "promote", "rollback"]
    tags = registry.client.get_registered_model(registry.name).tags
    assert [k for k in tags if k.startswith("audit_archive.")]
    assert_consistent(registry)
