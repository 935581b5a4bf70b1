"""Weekly monitoring: the quality signals (refusal, re-ask, thumbs, unsupported answers against the
docs, self-consistency) and input drift for one ISO week, a dashboard, and the decision whether to start
a retraining cycle.

Trigger mechanism (the only one): when the decision says so, this flow emits the Prefect event
`flywheel.retraining.requested`; the `quarterly-retraining` deployment in prefect.yaml has a trigger
on it (concurrency limit 1, CANCEL_NEW). Without a server the decision is recorded in the workspace
history and printed; nothing else starts.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.parameters import ConfigFile, OptionalText, WorkspaceDir
from tasks import monitor
from tasks.config import Settings, load_settings
from tasks.drift import compute_drift, load_prompt_records, prepare_reference, prompt_groups
from tasks.logs import load_window
from tasks.logs.spool import SpooledLogs, spool_window
from tasks.report import dashboard_markdown
from tasks.signals import compute_signals, hallucination_sample
from tasks.tracking import experiment_id, tracking_uri
from tasks.windows import iso_week_window

RETRAINING_EVENT = "flywheel.retraining.requested"


@task(name="load-week-logs", cache_policy=NO_CACHE)
def load_week_logs(settings: Settings, week: str) -> pa.Table | SpooledLogs:
    """The week's accepted rows: a table, or with monitoring.partition_rows set, spooled to disk chunk by
    chunk (monitoring.chunk_rows rows at a time; the same validation and quarantine)."""
    if settings.monitoring.partition_rows:
        folder = _spool_folder(settings, week)
        shutil.rmtree(folder, ignore_errors=True)
        spooled = spool_window(settings, *iso_week_window(week), folder, chunk_rows=settings.monitoring.chunk_rows)
        result, rows = spooled.result, spooled.rows
    else:
        result = load_window(settings, None, *iso_week_window(week))
        rows = result.table.num_rows
    get_run_logger().info(
        "week %s: %d records accepted, %d quarantined (%s)",
        week, rows, result.quarantined, result.reasons or "no problems",
    )
    return spooled if settings.monitoring.partition_rows else result.table


def _spool_folder(settings: Settings, week: str) -> Path:
    return settings.paths.under("monitoring", "spool", week)


def _correction_references(logs: pa.Table | SpooledLogs) -> dict[str, str]:
    if isinstance(logs, SpooledLogs):
        logs = logs.where_valid("correction", ["prompt", "correction"])
    return monitor.correction_references(logs)


@task(name="sample-hallucination-risk", cache_policy=NO_CACHE)
def week_hallucination(settings: Settings, logs: SpooledLogs) -> tuple[dict[str, Any] | None, str]:
    """Hallucination risk alone (the partitioned path computes the rate signals): as compute-signals does."""
    generator, which = monitor.consistency_generator(settings)
    references = _correction_references(logs) if generator is not None else None
    sample = hallucination_sample(logs, settings.signals, generator, references)
    get_run_logger().info("hallucination risk: %s", which)
    return sample, which


@task(name="compute-signals", cache_policy=NO_CACHE)
def compute_week_signals(settings: Settings, logs: pa.Table) -> dict[str, Any]:
    """Refusal, re-ask and thumbs over all rows; hallucination risk by sampling the model on a
    seeded sample of prompts (user corrections serve as references where present)."""
    generator, which = monitor.consistency_generator(settings)
    signals = compute_signals(
        logs, settings.signals, generator=generator, references=monitor.correction_references(logs)
    )
    signals["hallucination_model"] = which
    get_run_logger().info("hallucination risk: %s", which)
    return signals


@task(name="verify-answers", cache_policy=NO_CACHE)
def verify_week_answers(settings: Settings, week: str, logs: pa.Table | SpooledLogs) -> dict[str, Any] | None:
    """The headline hallucination signal: the unsupported-answer rate of a seeded sample of the week's
    answers, checked against the docs in force by the week's end (verify.verifier). None when
    verify.sample is 0."""
    from tasks.docs import load_docs
    from tasks.verify import make_verifier, unsupported_signal

    if settings.verify.sample == 0 or logs.num_rows == 0:
        return None
    _, end = iso_week_window(week)
    docs = load_docs(settings)
    result = unsupported_signal(logs, settings, docs.at(end), make_verifier(settings), docs_label=docs.label(end),
                                seed=monitor.week_step(week))
    get_run_logger().info("unsupported answers: %s of %d checked (%s, docs %s)", result["unsupported"],
                          result["checked"], result["verifier"], result["docs"])
    return result


def week_reference(settings: Settings, week: str, logs: pa.Table | SpooledLogs) -> tuple[Path, dict[str, Any] | None]:
    """The prompt file this week's drift is measured against. With no reference configured or stored
    yet, the weeks before this one become the baseline; with none of those either, this week does,
    and the drift result is already decided (insufficient rather than a meaningless zero): returned
    beside the path. (Spooled logs are read whole only for that first baseline.)"""
    serving = _most_served(logs)
    reference = monitor.reference_path(settings, serving)
    if reference is not None:
        return reference, None
    start, _ = iso_week_window(week)
    earlier = load_window(settings, None, start - timedelta(weeks=settings.signals.trailing_weeks), start,
                          quarantine=False).table
    if earlier.num_rows >= settings.drift.min_prompts:
        baseline = earlier
    else:
        baseline = logs.read(["prompt", "user_id", "session_id"]) if isinstance(logs, SpooledLogs) else logs
    reference = monitor.store_reference(settings, baseline.column("prompt").to_pylist(),
                                        groups=prompt_groups(baseline, settings.drift.null_resample_by))
    get_run_logger().info("no drift reference yet: stored a baseline of %d prompts", baseline.num_rows)
    if baseline is earlier:
        return reference, None
    return reference, {"band": "insufficient", "alert": False, "kl": None, "n_current": logs.num_rows,
                       "n_reference": 0, "reference": str(reference),
                       "reason": f"no earlier traffic to compare with: {week} becomes the drift baseline"}


def _most_served(logs: pa.Table | SpooledLogs) -> str | None:
    """The model version with the most rows this week (the first of equals, as value_counts lists them)."""
    if isinstance(logs, SpooledLogs):
        columns = (batch.column(0) for batch in logs.batches(["model_version"]))
    else:
        columns = iter(logs.column("model_version").chunks)
    counts: dict[Any, int] = {}
    for column in columns:
        for item in column.value_counts().to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return max(counts.items(), key=lambda kv: kv[1])[0] if counts else None


@task(name="compute-drift", cache_policy=NO_CACHE)
def compute_week_drift(settings: Settings, week: str, logs: pa.Table) -> dict[str, Any]:
    """Drift of this week's prompts against the reference (`week_reference`)."""
    reference, decided = week_reference(settings, week, logs)
    if decided is not None:
        return decided
    reference_prompts, reference_groups = load_prompt_records(reference)
    drift = compute_drift(reference_prompts, logs.column("prompt"), settings.drift, reference_groups=reference_groups)
    drift["reference"] = str(reference)
    return drift


@task(name="compute-signals-and-drift-by-partition", cache_policy=NO_CACHE)
def compute_week_by_partition(settings: Settings, week: str, logs: SpooledLogs) -> tuple[dict[str, Any], dict[str, Any]]:
    """monitoring.partition_rows set: the week's spooled rows streamed (in window order) by user hash into
    Parquet partitions of about that many rows, each reduced to sufficient statistics (a
    `monitoring-partition` task run on Dask with runner.kind dask) and merged: the same signals and drift
    as compute-signals and compute-drift, with the working memory set by the partition size."""
    from flows.parallel import partition_mapper
    from tasks.partitions import COLUMNS, partition_count, partitioned_signals_and_drift, spill_partitions

    rows = settings.monitoring.partition_rows
    reference, decided = week_reference(settings, week, logs)
    prepared = None
    if decided is None:
        reference_prompts, reference_groups = load_prompt_records(reference)
        prepared = prepare_reference(reference_prompts, settings.drift, reference_groups=reference_groups)
    folder = settings.paths.under("monitoring", "partitions", week)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        spilled = spill_partitions(logs.batches(COLUMNS), folder, partition_count(logs.num_rows, rows),
                                   total_rows=logs.num_rows, settings=settings.signals)
        with partition_mapper(settings.runner) as run:
            signals, drift, _ = partitioned_signals_and_drift(spilled["paths"], spilled, settings.signals,
                                                              settings.drift, prepared, map_partitions=run)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # raw prompts: they do not outlive the run
    get_run_logger().info("signals and drift from %d partition(s) of about %d rows (runner %s)",
                          len(spilled["paths"]), rows, settings.runner.kind)
    if decided is not None:
        return signals, decided
    drift["reference"] = str(reference)
    return signals, drift


@task(name="log-week-to-mlflow", cache_policy=NO_CACHE)
def log_week_to_mlflow(
    settings: Settings, week: str, signals: dict, drift: dict, decision: dict, history: list[dict]
) -> str:
    """One MLflow run per week in experiment `monitoring`, metrics stepped by week, plus the
    trend chart. A rerun of the same week replaces nothing: it adds a run tagged with the week."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    step = monitor.week_step(week)
    chart = monitor.plot_trend(settings, history, settings.paths.under("monitoring", f"trend-{week}.png"))
    metrics = {key: history[-1][key] for key in (*monitor.SIGNAL_KEYS, "feedback_coverage", "kl") if history}
    metrics = {key: value for key, value in metrics.items() if value is not None} | {"records": signals["records"]}
    client = MlflowClient(tracking_uri(settings))
    run_id = client.create_run(experiment_id(settings, "monitoring"), run_name=week).info.run_id
    try:
        now = int(time.time() * 1000)
        tags = {"week": week, "drift_band": drift.get("band"), "triggered": decision["triggered"]}
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                         tags=[RunTag(k, str(v)) for k, v in tags.items()])
        client.log_artifact(run_id, str(chart))
        client.log_dict(run_id, {"signals": signals, "drift": drift, "decision": decision}, "monitoring.json")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


@task(name="publish-dashboard", cache_policy=NO_CACHE)
def publish_dashboard(
    settings: Settings, week: str, signals: dict, drift: dict, decision: dict, history: list[dict]
) -> None:
    create_markdown_artifact(
        key="monitoring-dashboard",
        markdown=dashboard_markdown(settings, week, signals, drift, decision),
        description=f"Weekly signals and drift, {week}",
    )
    create_table_artifact(
        key="monitoring-signals",
        table=[
            {"week": row["week"], "records": row["records"], **{k: row.get(k) for k in monitor.SIGNAL_KEYS},
             "kl": row.get("kl"), "band": row.get("band"), "triggered": row.get("triggered")}
            for row in history[-12:]
        ],
        description="The last 12 monitored weeks",
    )


@task(name="request-retraining", cache_policy=NO_CACHE)
def request_retraining(week: str, decision: dict) -> bool:
    """Emit the one event the retraining deployment's trigger listens for."""
    from prefect.events import emit_event

    # The cycle learns from the quarter of traffic that ends with this week (the drifted weeks included),
    # not from the last calendar quarter, which may predate the drift.
    _, end = iso_week_window(week)
    window = f"{(end - timedelta(weeks=13)).date()}..{end.date()}"
    event = emit_event(
        event=RETRAINING_EVENT,
        resource={"prefect.resource.id": f"flywheel.monitoring.{week}"},
        payload={"week": week, "window": window, "reasons": decision["reasons"]},
    )
    return event is not None


@flow(name="weekly-monitoring", log_prints=True)
def weekly_monitoring(
    week: OptionalText = "",
    config: ConfigFile = "",
    workspace: WorkspaceDir = "",
) -> dict[str, Any]:
    """Compute the week's quality signals and drift, publish the dashboard, decide on retraining.

    Args:
        week: ISO week to check, e.g. "2026-W03". Empty: the last complete week.
        config: YAML config file laid over the embedded defaults (empty: $FLYWHEEL_CONFIG, else the defaults).
        workspace: folder holding logs, history and the MLflow store (empty: the config's, default ./workspace).
    """
    settings = load_settings(config, {"paths.workspace": workspace} if workspace else None)
    # validated before any work, and written one way ("2026W3" -> "2026-W03") in runs, files and history
    week = monitor.week_label(monitor.week_start(week)) if week else monitor.previous_week()

    logs = load_week_logs(settings, week)
    try:
        if settings.monitoring.partition_rows:
            signals, drift = compute_week_by_partition(settings, week, logs)
            signals["hallucination"], signals["hallucination_model"] = week_hallucination(settings, logs)
        else:
            signals = compute_week_signals(settings, logs)
            drift = compute_week_drift(settings, week, logs)
        signals["unsupported"] = verify_week_answers(settings, week, logs)
    finally:
        shutil.rmtree(_spool_folder(settings, week), ignore_errors=True)  # raw prompts: they do not outlive the run
    decision = monitor.decide_trigger(settings, week, signals, drift, monitor.load_history(settings))
    history = monitor.record_week(settings, monitor.history_entry(week, signals, drift, decision))
    run_id = log_week_to_mlflow(settings, week, signals, drift, decision, history)
    publish_dashboard(settings, week, signals, drift, decision, history)
    if decision["triggered"]:
        decision["event_emitted"] = request_retraining(week, decision)

    unsupported = (signals["unsupported"] or {}).get("unsupported_rate")
    print(
        f"{week}: refusal {signals['refusal_rate']}, re-ask {signals['reask_rate']}, unsupported {unsupported}, "
        f"drift {drift.get('band')} "
        f"-> retraining {'TRIGGERED' if decision['triggered'] else 'not triggered'}"
    )
    return {"week": week, "signals": signals, "drift": drift, "triggered": decision["triggered"],
            "decision": decision, "mlflow_run_id": run_id}

