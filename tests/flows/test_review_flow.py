"""The canary-review and rollback flows under the shared Prefect test server, on a real MLflow sqlite
registry (copied from a migrated template: creating MLflow's tables takes seconds). Suspending needs
a deployment run: that path is covered by tests/integration/test_prefect_server.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows.review import ReviewDecision, canary_review, mlflow_version_url, review_key
from flows.rollback import rollback
from tasks.config import REPO_ROOT, load_settings
from tasks.registry import Registry, RegistryRuleError

PASSED = {"gate": {"passed": True, "first_cycle": True, "checks": [], "failed": []},
          "suites": {"regression": {"behaviour": {"candidate": 0.9, "diff": None}}}}


@pytest.fixture()
def workspace(tmp_path: Path, template_db: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(template_db, ws / "mlflow.db")
    return ws


def registry_of(workspace: Path) -> Registry:
    return Registry(load_settings(None, {"paths.workspace": str(workspace)}))


def register(registry: Registry, adapter: Path, cycle: str) -> str:
    return registry.register_canary(adapter, cycle_id=cycle, base_path=Path("/models/base"), base_digest="b" * 64,
                                    dataset_sha256="d" * 64, eval_report=PASSED)


def latest_artifact(key: str):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact with key {key}"
    return found[0]


def test_review_outside_a_deployment_awaits_the_cli_and_publishes_the_evidence(workspace: Path, adapter: Path,
                                                                               monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_UI_URL", "http://mlflow.example:5000/")
    registry = registry_of(workspace)
    version = register(registry, adapter, "c1")
    report = workspace / "cycles" / "c1" / "06_eval" / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text("| suite | behaviour |\n|---|---|\n| regression | 0.90 |\n", encoding="utf-8")
    (report.parent / "report.json").write_text(json.dumps({**PASSED, "ci_level": 0.95}), encoding="utf-8")
    (report.parent.parent / "cost.json").write_text(json.dumps(
        {"self_hosted_monthly": 300.0, "api_monthly": None, "roi_1y": None}), encoding="utf-8")

    result = canary_review(workspace=str(workspace))

    assert result["version"] == version and result["status"] == "awaiting review"
    assert result["approve"] == f"flywheel approve {version} --reviewer NAME --comment TEXT"
    assert result["reject"].startswith(f"flywheel reject {version} ")
    assert result["mlflow_url"] == f"http://mlflow.example:5000/#/models/flywheel-adapter/versions/{version}"
    markdown = latest_artifact("canary-review").data
    assert result["mlflow_url"] in markdown and result["approve"] in markdown
    # the summary first (gate, headline per suite, no traffic yet, cost), the full report after it
    summary, full = markdown.split("## Full evaluation report")
    assert summary.startswith(f"**v{version} of flywheel-adapter: gate PASSED**")
    assert "- regression behaviour - → 0.900\n" in summary and "no live traffic yet" in summary
    assert "$300.00 self-hosted vs no API volume a month" in summary
    assert "| regression | 0.90 |" in full
    # Nothing was decided: the version is still the canary, unreviewed, and no champion moved.
    status = registry.status()
    assert status["canary"] == version and status["champion"] is None and status["versions"][0]["review"] is None


def test_review_without_a_canary_says_what_to_do(workspace: Path) -> None:
    with pytest.raises(RegistryRuleError, match="no canary to review"):
        canary_review(workspace=str(workspace))


def test_review_form_refuses_blank_text_itself() -> None:
    """The Resume form's schema is what Prefect's server checks an answer against before it resumes the
    run (schema_tools.validate in its resume endpoint): blank text must fail there, not in the flow."""
    from prefect.utilities.schema_tools import ValidationError, validate

    fields = ReviewDecision.model_fields
    assert all(fields[name].is_required() for name in ("decision", "reviewer", "comment"))
    schema = ReviewDecision.model_json_schema()
    good = {"decision": "approve", "reviewer": "alice", "comment": "ok"}
    validate(good, schema, raise_on_error=True)
    for field, blank in (("reviewer", "   "), ("reviewer", ""), ("comment", " \n\t"), ("reviewer", "\u3000")):
        with pytest.raises(ValidationError, match=field):
            validate({**good, field: blank}, schema, raise_on_error=True)
        with pytest.raises(ValueError):
            ReviewDecision(**{**good, field: blank})
    with pytest.raises(ValueError):
        ReviewDecision(decision="maybe", reviewer="alice", comment="ok")
    form = ReviewDecision.with_initial_data(description="evidence")
    assert form._description == "evidence" and all(form.model_fields[n].is_required() for n in fields)


def test_every_ask_again_uses_a_pause_key_prefect_accepts() -> None:
    """Prefect derives the run-input keys from the pause key and accepts lowercase letters, digits and
    dashes only; a refused key leaves the run suspended with a Resume dialog that never loads."""
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Suspended
    from prefect.types.names import raise_on_name_alphanumeric_dashes_only

    keys = [review_key("12", attempt) for attempt in (1, 2, 3)]
    assert len(set(keys)) == 3
    for key in keys:
        for input_key in keyset_from_paused_state(Suspended(pause_key=key)).values():
            raise_on_name_alphanumeric_dashes_only(input_key, "key")


def test_rollback_flow_after_the_first_champion_serves_the_base_model(workspace: Path, adapter: Path) -> None:
    registry = registry_of(workspace)
    version = register(registry, adapter, "c1")
    registry.review(version, decision="approve", reviewer="ana", comment="good")
    registry.promote(version)

    result = rollback(workspace=str(workspace))

    assert (result["from"], result["to"]) == (version, "base")
    assert registry.status()["champion"] is None
    markdown = latest_artifact("rollback").data
    assert "v1 -> **base**" in markdown and "now serving: the base model, no adapter" in markdown
    registry.review(version, decision="reject", reviewer="bo", comment="tone")
    with pytest.raises(RegistryRuleError, match="--override-reason"):
        rollback(to=version, workspace=str(workspace))
    restored = rollback(to=version, reviewer="lead", override_reason="base is worse", workspace=str(workspace))
    assert restored["to"] == version and registry.status()["champion"] == version
    assert "rejection overridden, reason: base is worse" in latest_artifact("rollback").data


def test_rollback_flow_moves_the_champion_back(workspace: Path, adapter: Path) -> None:
    registry = registry_of(workspace)
    for cycle in ("c1", "c2"):
        version = register(registry, adapter, cycle)
        registry.review(version, decision="approve", reviewer="ana", comment="good")
        registry.promote(version)
    assert registry.status()["champion"] == "2"

    result = rollback(workspace=str(workspace))

    assert result["from"] == "2" and result["to"] == "1" and result["seconds"] < 1.0
    assert registry.status()["champion"] == "1"
    assert registry.audit()[-1]["action"] == "rollback"
    markdown = latest_artifact("rollback").data
    assert "v2 -> **v1**" in markdown and mlflow_version_url("flywheel-adapter", "1") in markdown
    with pytest.raises(RegistryRuleError, match="already the champion"):
        rollback(to="1", workspace=str(workspace))


def test_prefect_yaml_declares_the_five_deployments() -> None:
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"weekly-monitoring", "quarterly-retraining", "canary-review", "canary-ramp", "rollback"}
    from flows.ramp import APPROVED_EVENT

    ramp = deployments["canary-ramp"]
    assert ramp["entrypoint"] == "flows/ramp.py:canary_ramp"
    assert [t["expect"] for t in ramp["triggers"]] == [[APPROVED_EVENT]]
    assert ramp["triggers"][0]["parameters"] == {"version": "{{ event.payload.version }}"}
    assert deployments["weekly-monitoring"]["entrypoint"] == "flows/monitoring.py:weekly_monitoring"
    assert deployments["canary-review"]["entrypoint"] == "flows/review.py:canary_review"
    assert deployments["rollback"]["entrypoint"] == "flows/rollback.py:rollback"
    retraining = deployments["quarterly-retraining"]
    assert retraining["entrypoint"] == "flows/retraining.py:quarterly_retraining"
    assert retraining["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    from flows.monitoring import RETRAINING_EVENT

    assert [t["expect"] for t in retraining["triggers"]] == [[RETRAINING_EVENT]]
    for deployment in spec["deployments"]:
        assert deployment["work_pool"]["name"] == "flywheel-pool"
