"""The weekly monitoring flow on simulated traffic, under a real Prefect test server and a real
MLflow sqlite store: the launch week is flagged, the dashboard and MLflow runs exist."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from flows.monitoring import weekly_monitoring
from tasks.config import load_settings
from tasks.monitor import load_history
from tasks.simulate import simulate

# Simulated week 1 starts Monday 2026-0105, ISO week 2026-W02.
WEEKS = ["2026-W02", "2026-W03", "2026-W04", "2026-W05"]


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    workspace = tmp_path_factory.mktemp("monitoring")
    config = workspace / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "paths": {"workspace": str(workspace)},
                "simulate": {"weeks": 4, "launch_week": 4, "records_per_week": 800, "seed": 3},
                "drift": {"min_prompts": 300, "null_resamples": 50},
                "signals": {"consistency_prompts": 20, "consistency_model": "scripted"},
            }
        ),
        encoding="utf-8",
    )
    settings = load_settings(config)
    simulate(settings.simulate, workspace, data_dir=settings.paths.data_dir)
    results = [weekly_monitoring(week=week, config=str(config)) for week in WEEKS]
    return workspace, results


def test_launch_week_is_detected_and_triggers_retraining(monitored) -> None:
    _, results = monitored
    by_week = {r["week"]: r for r in results}
    # The first week monitored has nothing earlier to compare with: it becomes the baseline.
    assert by_week["2026-W02"]["drift"]["band"] == "insufficient"
    assert [by_week[w]["drift"]["band"] for w in WEEKS[1:3]] == ["same", "same"]
    assert not any(by_week[w]["triggered"] for w in WEEKS[:3])
    launch = by_week["2026-W05"]
    assert launch["drift"]["alert"] is True
    assert launch["triggered"] is True
    assert any("drift" in reason for reason in launch["decision"]["reasons"])
    # The explanation names the new products, not PII.
    terms = " ".join(t["term"] for t in launch["drift"]["top_terms"])
    assert "helix" in terms or "quasar" in terms or "zephyr" in terms or "nova" in terms


def test_signals_have_rates_with_intervals(monitored) -> None:
    _, results = monitored
    signals = results[-1]["signals"]
    assert signals["records"] == 800
    low, high = signals["refusal_rate_ci"]
    assert low <= signals["refusal_rate"] <= high
    hallucination = signals["hallucination"]
    assert hallucination["prompts"] == 20
    assert 0 <= hallucination["at_risk_rate"] <= 1
    assert signals["hallucination_model"] == "the simulator's scripted model"
    # Refusals rise after the launch: the scripted champion does not know the v2 products.
    assert signals["refusal_rate"] > results[0]["signals"]["refusal_rate"]


def test_history_records_one_line_per_week_and_reruns_replace_it(monitored) -> None:
    workspace, _ = monitored
    settings = load_settings(None, {"paths.workspace": str(workspace)})
    assert [row["week"] for row in load_history(settings)] == WEEKS
    weekly_monitoring(week=WEEKS[0], workspace=str(workspace))
    assert [row["week"] for row in load_history(settings)] == WEEKS


def test_mlflow_has_a_run_per_week_with_metrics_and_the_trend_chart(monitored) -> None:
    import mlflow

    workspace, results = monitored
    client = mlflow.MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("monitoring")
    runs = client.search_runs([experiment.experiment_id])
    assert {run.data.tags["week"] for run in runs} == set(WEEKS)
    launch_run = client.get_run(results[-1]["mlflow_run_id"])
    assert launch_run.data.metrics["refusal_rate"] == pytest.approx(results[-1]["signals"]["refusal_rate"])
    history = client.get_metric_history(launch_run.info.run_id, "kl")
    assert history[0].step == 202605
    artifacts = {item.path for item in client.list_artifacts(launch_run.info.run_id)}
    assert {"trend-2026-W05.png", "monitoring.json"} <= artifacts
    assert not (Path.cwd() / "mlruns").exists()


def test_dashboard_artifact_is_published_with_its_key(monitored) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest(key: str):
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return found

    dashboards = asyncio.run(latest("monitoring-dashboard"))
    assert dashboards, "no monitoring-dashboard artifact"
    assert any("Retraining triggered: yes" in a.data for a in dashboards)
    assert asyncio.run(latest("monitoring-signals"))


def test_unsupported_answers_are_checked_against_the_docs_in_force(monitored) -> None:
    workspace, results = monitored
    first, launch = results[0]["signals"]["unsupported"], results[-1]["signals"]["unsupported"]
    assert first["checked"] == launch["checked"] == 200 and first["verifier"] == "claims"
    assert first["docs"] == "always" and launch["docs"] == "in force from 2026-01-26"  # launch week 4
    assert set(launch["by_model_version"]) == {"scripted-v1"}
    assert 0 < launch["unsupported_rate"] < 0.5 and launch["unsupported_rate_ci"][0] <= launch["unsupported_rate"]
    history = load_history(load_settings(None, {"paths.workspace": str(workspace)}))
    assert [row["unsupported_rate"] for row in history] == [r["signals"]["unsupported"]["unsupported_rate"] for r in results]
    assert "unsupported_alarm" in results[-1]["decision"]


def test_partitioned_monitoring_gives_the_in_memory_signals_and_drift(monitored) -> None:
    """monitoring.partition_rows: the launch week read 150 rows at a time and reduced by user-hash
    partitions of 200 rows equals the in-memory run (signals, drift, decision); the spooled rows and the
    spilled partitions are gone afterwards."""
    workspace, results = monitored
    config = workspace / "partitioned.yaml"
    base = yaml.safe_load((workspace / "config.yaml").read_text(encoding="utf-8"))
    config.write_text(yaml.safe_dump(base | {"monitoring": {"partition_rows": 200, "chunk_rows": 150}}),
                      encoding="utf-8")
    partitioned = weekly_monitoring(week=WEEKS[-1], config=str(config))
    in_memory = results[-1]
    assert partitioned["signals"] == in_memory["signals"]
    assert partitioned["drift"] == in_memory["drift"] and partitioned["drift"]["alert"] is True
    assert partitioned["decision"]["reasons"] == in_memory["decision"]["reasons"]
    assert not (workspace / "monitoring" / "partitions" / WEEKS[-1]).exists()
    assert not (workspace / "monitoring" / "spool" / WEEKS[-1]).exists()
