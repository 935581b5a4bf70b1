"""`flywheel demo` end to end on tiny settings, under the Prefect test server: simulated weeks
answered by the real (tiny) base model, weekly monitoring, a real retraining cycle, the review
hand-off, promotion and the weeks after with the new champion answering."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from flows.demo import MARKER, DemoError, flywheel_demo, reset_workspace
from tasks.config import load_settings
from tasks.registry import Registry

pytestmark = pytest.mark.slow

REQUIRED_KEYS = {"drift_detected_week", "cycle_id", "canary_version", "gate_passed", "promoted", "refusal_rate_before",
                 "refusal_rate_after", "new_topic_accuracy_before", "new_topic_accuracy_after", "seconds",
                 "wrong_answer_rate_before", "wrong_answer_rate_after", "unsupported_rate_before", "unsupported_rate_after",
                 "ab_decision", "ab_refusal_diff", "ab_refusal_ci", "ramp_steps"}


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test-size recipe trained long enough to answer some v1 questions and refuse the new
    products (the session's tiny base answers everything with noise: every case would get one label,
    and the agreement gate rightly blocks a cycle whose labels carry no information)."""
    from tasks import base_model
    from tasks.config import SHIPPED_DATA

    base_model.BOOTSTRAP_SIZES["demo-test"] = dict(base_model.BOOTSTRAP_SIZES["test"], epochs=20)
    try:
        built = base_model.bootstrap_base_model(tmp_path_factory.mktemp("demo-base") / "base", data_dir=SHIPPED_DATA,
                                                size="demo-test")  # type: ignore[arg-type]
    finally:
        del base_model.BOOTSTRAP_SIZES["demo-test"]
    return Path(built["path"])


def _demo_config(workspace: Path, demo_base: Path) -> Path:
    config = workspace.parent / f"{workspace.name}.yaml"
    config.write_text(yaml.safe_dump({
        "paths": {"workspace": str(workspace)},
        "simulate": {"weeks": 4, "launch_week": 3, "records_per_week": 800, "seed": 5, "new_topic_share": 0.5},
        "signals": {"consistency_model": "scripted", "consistency_prompts": 10, "trigger_cooldown_days": 91},
        "drift": {"min_prompts": 400, "null_resamples": 50, "vocab_size": 500},
        "pii": {"require_key": False, "processes": 1},
        "annotation": {"simulate": True, "simulated_accuracy": 0.97},
        "dataset": {"max_new_examples": 60},
        "model": {"base": str(demo_base), "max_new_tokens": 24, "batch_size": 64, "cpu_threads": 1},
        "train": {"max_steps": 6, "batch_size": 8, "save_steps": 3, "early_stopping_patience": 0},
        # The test-size base cannot reach production floors; this checks the orchestration, not the model.
        "evaluate": {"bootstrap_samples": 100, "gates": {"new_cases": {"behaviour": {"floor": 0.0}}}},
        # Nor can its 6-step canary be shown better on a day of users: wide margins let a no-worse one through.
        "abtest": {"min_users_to_decide": 15, "margins": {"refusal_rate": 0.5, "reask_rate": 0.5}},
        "ramp": {"steps": [0.5, 1.0], "min_step_hours": 24, "max_step_hours": 72, "look_every_hours": 24,
                 "min_users_per_arm": 15},
    }), encoding="utf-8")
    return config


@pytest.fixture(scope="module")
def awaiting_config(tmp_path_factory: pytest.TempPathFactory, demo_base: Path) -> Path:
    return _demo_config(tmp_path_factory.mktemp("demo-awaiting"), demo_base)


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory: pytest.TempPathFactory, demo_base: Path) -> Path:
    return _demo_config(tmp_path_factory.mktemp("demo"), demo_base)


@pytest.fixture(scope="module")
def awaiting(awaiting_config: Path) -> dict:
    """A run without --auto-approve: the canary waits for a reviewer."""
    return flywheel_demo(config=str(awaiting_config), weeks_after=1)


@pytest.fixture(scope="module")
def promoted(demo_config: Path) -> dict:
    """A run with --auto-approve. (MLflow keeps one store per URI in a process, so a second run in
    the same process gets its own workspace; the CLI runs one demo per process.)"""
    return flywheel_demo(config=str(demo_config), auto_approve=True, weeks_after=1)


def test_without_auto_approve_the_canary_waits_for_review(awaiting_config: Path, awaiting: dict) -> None:
    assert REQUIRED_KEYS <= set(awaiting)
    assert awaiting["canary_version"] == "1" and awaiting["gate_passed"] and not awaiting["promoted"]
    assert awaiting["refusal_rate_after"] is None and awaiting["new_topic_accuracy_after"] is None
    status = Registry(load_settings(awaiting_config)).status()
    assert status["canary"] == "1" and status["champion"] is None


def test_drift_is_detected_at_the_launch(awaiting: dict) -> None:
    assert awaiting["launch_week"] == "2026-W04"  # week 3 of a quarter starting Monday 2026-01-05
    assert awaiting["drift_detected_week"] in ("2026-W04", "2026-W05")
    assert awaiting["retraining_triggered_week"] == awaiting["drift_detected_week"]
    assert [row["week"] for row in awaiting["weeks"]] == ["2026-W02", "2026-W03", "2026-W04", "2026-W05"]


def test_auto_approve_promotes_and_the_new_champion_answers_the_weeks_after(demo_config: Path, promoted: dict) -> None:
    assert REQUIRED_KEYS <= set(promoted)
    assert promoted["promoted"] and promoted["canary_version"] == "1"
    assert Registry(load_settings(demo_config)).status()["champion"] == "1"
    after = promoted["weeks"][-1]
    assert after["week"] == "2026-W06" and after["model_version"] == "v1"  # the adapter, not the bare base
    assert all(row["model_version"].startswith("base@") for row in promoted["weeks"][:-1])
    assert promoted["refusal_rate_after"] is not None and promoted["new_topic_accuracy_after"] is not None
    # what users saw (ground truth) beside what monitoring measured (answers checked against the docs)
    for when in ("before", "after"):
        assert 0 <= promoted[f"wrong_answer_rate_{when}"] <= 1 and 0 <= promoted[f"unsupported_rate_{when}"] <= 1
    assert promoted["before"]["unsupported_checked"] > 0 and promoted["weeks"][-1]["unsupported_rate"] is not None
    workspace = Path(promoted["workspace"])
    logged = {json.loads(line)["model_version"] for path in (workspace / "logs").glob("*.jsonl")
              for line in path.read_text().splitlines()}
    assert logged == {"v1", next(iter({row["model_version"] for row in promoted["weeks"][:-1]}))}
    # drift of the new champion's weeks is measured against the traffic it learned from
    assert (workspace / "monitoring" / "reference" / "v1.jsonl").is_file()


def test_the_canary_earns_its_promotion_on_live_traffic(promoted: dict) -> None:
    assert promoted["ab_decision"] == "advance" and promoted["ramp_outcome"] == "promoted"
    assert [step["share"] for step in promoted["ramp_steps"]] == [0.5]
    assert promoted["ramp_steps"][0]["hours"] >= 24  # ramp.min_step_hours, in simulated time
    low, high = promoted["ab_refusal_ci"]
    assert low <= promoted["ab_refusal_diff"] <= high
    ramp_report = next((Path(promoted["workspace"]) / "cycles").glob("*/07_ramp/report.md")).read_text()
    assert "PROMOTED" in ramp_report and "canary vs champion" in ramp_report


def test_bad_canary_is_halted_at_the_first_step_and_the_champion_stays(demo_config: Path, promoted: dict) -> None:
    """What `flywheel demo --bad-canary` does after the quarter, on the promoted demo's workspace."""
    from flows.demo import _Clock, _ramp_fields, ramp_live, register_bad_canary
    from tasks.base_model import resolve_base_model

    values = yaml.safe_load(demo_config.read_text(encoding="utf-8"))
    del values["abtest"]["margins"]  # the default guardrails, not the wide ones the sound canary ramped under
    config = demo_config.with_name("bad-canary.yaml")
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    settings = load_settings(config)
    cycle = {"cycle_id": promoted["cycle_id"], "canary_version": promoted["canary_version"]}
    bad = register_bad_canary(settings, resolve_base_model(settings), cycle, _Clock())
    ramp = ramp_live(settings, str(config), bad, datetime(2026, 3, 1, tzinfo=timezone.utc), _Clock())
    fields = _ramp_fields(ramp)
    assert fields["ramp_outcome"] == "halted" and fields["ab_decision"] == "halt"
    assert [step["share"] for step in fields["ramp_steps"]] == [0.5]
    assert fields["ab_refusal_ci"][0] > settings.abtest.margins["refusal_rate"]
    status = Registry(settings).status()
    assert status["champion"] == promoted["canary_version"] and status["canary"] is None
    assert next(v for v in status["versions"] if v["version"] == bad)["review"]["decision"] == "reject"


def test_same_quarter_same_figures(awaiting: dict, promoted: dict) -> None:
    assert promoted["refusal_rate_before"] == awaiting["refusal_rate_before"]
    assert promoted["new_topic_accuracy_before"] == awaiting["new_topic_accuracy_before"]
    assert promoted["wrong_answer_rate_before"] == awaiting["wrong_answer_rate_before"]
    assert promoted["unsupported_rate_before"] == awaiting["unsupported_rate_before"]
    assert promoted["cycle_id"] == awaiting["cycle_id"]


def test_reset_keeps_the_base_model_and_refuses_foreign_folders(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    (demo / "models" / "base").mkdir(parents=True)
    (demo / "models" / "base" / "config.json").write_text("{}")
    (demo / "logs").mkdir()
    (demo / "mlflow.db").write_text("x")
    (demo / MARKER).write_text("demo\n")
    reset_workspace(demo)
    assert sorted(p.name for p in demo.iterdir()) == sorted([MARKER, "models"])
    assert (demo / "models" / "base" / "config.json").is_file()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="no demo wrote"):
        reset_workspace(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_demo_recipe_benchmark_judges_the_canary_as_the_demo_did(demo_config: Path, promoted: dict) -> None:
    """benchmarks/demo_recipe.py is only worth its figures if judging the demo's own canary on the demo's
    weeks after the promotion gives the demo's own ground-truth figures."""
    import sys

    from tasks.config import REPO_ROOT
    from tasks.generation import LocalGenerator

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import demo_recipe

    settings = load_settings(demo_config)
    items = demo_recipe.after_weeks_prompts(Path(promoted["workspace"]))
    assert len(items) == promoted["after"]["records"]
    generator = LocalGenerator(Path(settings.model.base), batch_size=64, max_new_tokens=settings.model.max_new_tokens)
    generator.load_adapter("canary", Path(promoted["report"]).parent.parent / "05_adapter")
    generator.use("canary")
    judged = demo_recipe.judge(generator, items, settings.paths.data_dir)
    assert judged["all"]["wrong"] == promoted["wrong_answer_rate_after"]
    assert judged["new_products"]["correct"] == promoted["new_topic_accuracy_after"]
