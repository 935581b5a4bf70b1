"""What the weekly monitoring flow decides with: the drift reference, the week-by-week history,
the retraining trigger (with its cool-down) and the trend chart (the dashboard text is tasks/report.py's).

The history lives in `<workspace>/monitoring/history.jsonl`, one line per ISO week (a rerun of a
week replaces its line), so the trigger's trailing baseline and cool-down survive across runs and
need no server.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tasks.config import Settings
from tasks.windows import iso_week_window
from tasks.signals import wilson_interval

# unsupported_rate (answers checked against the docs) is the headline hallucination signal; hallucination_risk
# (self-consistency) stays beside it as a secondary one: a model can be consistently wrong.
SIGNAL_KEYS = ("refusal_rate", "reask_rate", "thumbs_down_rate", "unsupported_rate", "hallucination_risk")


def week_label(moment: datetime | date) -> str:
    year, week, _ = moment.isocalendar()
    return f"{year}-W{week:02d}"


def previous_week(now: datetime | None = None) -> str:
    """The last complete ISO week: what a Monday-morning schedule should look at."""
    now = now or datetime.now(timezone.utc)
    return week_label(now - timedelta(days=7))


def week_start(week: str) -> date:
    """The Monday of an ISO week ("2026-W03", "2026W3"); a ValueError names the valid form and range."""
    return iso_week_window(week)[0].date()


def week_step(week: str) -> int:
    """An increasing integer for MLflow's step axis that still reads as the week: 2026-W03 -> 202603."""
    year, number, _ = week_start(week).isocalendar()
    return year * 100 + number


# --------------------------------------------------------------------------------------- reference


def reference_dir(settings: Settings) -> Path:
    return settings.paths.under("monitoring", "reference")


def reference_path(settings: Settings, model_version: str | None) -> Path | None:
    """The prompt set drift is measured against, in order of preference: a configured file; the
    prompts stored for the model version that served the week; the baseline captured from the first
    monitored weeks. None when none exists yet."""
    if settings.drift.reference is not None:
        if not settings.drift.reference.is_file():
            raise FileNotFoundError(
                f"drift.reference {settings.drift.reference} does not exist: point it at a JSONL file "
                "with a 'prompt' field or a text file with one prompt per line"
            )
        return settings.drift.reference
    candidates = [reference_dir(settings) / f"{model_version}.jsonl"] if model_version else []
    candidates.append(reference_dir(settings) / "baseline.jsonl")
    return next((path for path in candidates if path.is_file()), None)


def store_reference(settings: Settings, prompts: list[str], name: str = "baseline",
                    groups: list[str | None] | None = None) -> Path:
    """Keep a reference prompt set in the workspace (raw prompts: it never leaves the workspace), with
    each prompt's hashed session/user group for the drift null's block bootstrap when known."""
    path = reference_dir(settings) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for prompt, group in zip(prompts, groups or [None] * len(prompts), strict=True):
            row = {"prompt": prompt} if group is None else {"prompt": prompt, "group": group}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def reference_from_logs(settings: Settings, name: str, since: datetime, until: datetime) -> Path:
    """Store the prompts of [since, until) as the drift reference of model version `name`. After a
    promotion, the new champion's weeks are then compared with the traffic it was trained to serve,
    not with the traffic from before the change it was trained to absorb."""
    from tasks.logs import load_window

    from tasks.drift import prompt_groups

    table = load_window(settings, None, since, until, quarantine=False).table
    if table.num_rows == 0:
        raise ValueError(f"no logged prompts between {since.isoformat()} and {until.isoformat()} to use as the "
                         f"drift reference of {name!r}")
    return store_reference(settings, table.column("prompt").to_pylist(), name,
                           groups=prompt_groups(table, settings.drift.null_resample_by))


# ------------------------------------------------------------------------------ hallucination risk


def consistency_generator(settings: Settings) -> tuple[Any, str]:
    """The model whose sampled answers give the hallucination-risk signal, and a note saying which
    (or why none: the signal is then reported as not sampled, never as zero risk)."""
    if settings.signals.consistency_prompts == 0:
        return None, "not sampled: signals.consistency_prompts is 0"
    if settings.signals.consistency_model == "scripted":
        from tasks.simulate import default_model

        return default_model(settings.simulate, settings.paths.data_dir), "the simulator's scripted model"
    from tasks.base_model import ModelError
    from tasks.served import served_generator

    try:
        served = served_generator(settings)
    except ModelError as err:
        return None, f"not sampled: {err}"
    return served.generator, served.description


def correction_references(table: Any) -> dict[str, str]:
    """Answers users supplied with their thumbs-down: the known-good reference for those prompts."""
    prompts, corrections = table.column("prompt").to_pylist(), table.column("correction").to_pylist()
    return {prompt: fix for prompt, fix in zip(prompts, corrections) if fix}


# ----------------------------------------------------------------------------------------- history


def history_path(settings: Settings) -> Path:
    return settings.paths.under("monitoring", "history.jsonl")


def load_history(settings: Settings) -> list[dict[str, Any]]:
    path = history_path(settings)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return sorted(rows, key=lambda row: week_step(row["week"]))


def record_week(settings: Settings, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Insert or replace the week's line; returns the whole history, oldest first."""
    rows = [row for row in load_history(settings) if row["week"] != entry["week"]] + [entry]
    rows.sort(key=lambda row: week_step(row["week"]))
    path = history_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(path)
    return rows


def history_entry(week: str, signals: dict[str, Any], drift: dict[str, Any], decision: dict[str, Any]) -> dict:
    hallucination = signals.get("hallucination") or {}
    unsupported = signals.get("unsupported") or {}
    return {
        "week": week_label(week_start(week)),  # "2026W3" and "2026-W03" share one history line
        "records": signals["records"],
        "refusal_count": signals["refusal_count"],
        "refusal_rate": signals["refusal_rate"],
        "reask_rate": signals["reask_rate"],
        "thumbs_down_rate": signals["thumbs_down_rate"],
        "feedback_coverage": signals["feedback_coverage"],
        "unsupported_rate": unsupported.get("unsupported_rate"),
        "unsupported_count": unsupported.get("unsupported"),
        "unsupported_checked": (unsupported.get("checked", 0) - unsupported.get("undecided", 0)) if unsupported else None,
        "hallucination_risk": hallucination.get("at_risk_rate"),
        "kl": drift.get("kl"),
        "null_kl": drift.get("null_kl"),
        "band": drift.get("band"),
        "drift_alert": bool(drift.get("alert")),
        "triggered": decision["triggered"],
    }


# ----------------------------------------------------------------------------------------- trigger


def decide_trigger(
    settings: Settings,
    week: str,
    signals: dict[str, Any],
    drift: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Should this week start a retraining cycle? Drift alert, a refusal-rate alarm or an
    unsupported-answer alarm against the trailing weeks; suppressed inside the cool-down after the last
    trigger. Always says why."""
    reasons: list[str] = []
    if drift.get("alert"):
        reasons.append(
            f"input drift: KL {drift['kl']:.3f} is in band '{drift['band']}' and above the "
            f"no-drift baseline {drift['null_kl']:.3f}"
        )
    alarm = refusal_alarm(settings, week, signals, history)
    if alarm["alarm"]:
        reasons.append(alarm["reason"])
    grounded = unsupported_alarm(settings, week, signals, history)
    if grounded["alarm"]:
        reasons.append(grounded["reason"])

    earlier = [row for row in history if week_step(row["week"]) < week_step(week)]
    last_trigger = next((row["week"] for row in reversed(earlier) if row.get("triggered")), None)
    cooldown_until = None
    if last_trigger:
        cooldown_until = week_start(last_trigger) + timedelta(days=settings.signals.trigger_cooldown_days)
    suppressed = bool(reasons) and cooldown_until is not None and week_start(week) < cooldown_until
    return {
        "triggered": bool(reasons) and not suppressed,
        "reasons": reasons,
        "suppressed_by_cooldown": suppressed,
        "last_trigger_week": last_trigger,
        "cooldown_until": cooldown_until.isoformat() if cooldown_until else None,
        "refusal_alarm": alarm,
        "unsupported_alarm": grounded,
    }


def unsupported_alarm(
    settings: Settings, week: str, signals: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, Any]:
    """Unsupported-answer rate above the pooled trailing weeks by `verify.alarm_margin`, with Wilson
    intervals that do not overlap: answers stopped being grounded in the docs (a launch the model does not
    know, a candidate that makes things up)."""
    current = signals.get("unsupported") or {}
    checked = (current.get("checked", 0) - current.get("undecided", 0)) if current else 0
    trailing = _trailing(settings, week, history, "unsupported_count", "unsupported_checked")
    if not trailing or not checked:
        return {"alarm": False, "reason": "no trailing weeks with checked answers to compare with", "baseline_rate": None}
    low, _ = wilson_interval(current["unsupported"], checked)
    return _above_baseline("unsupported-answer rate", current["unsupported"] / checked, low, trailing,
                           "unsupported_count", "unsupported_checked", settings.verify.alarm_margin)


def refusal_alarm(
    settings: Settings, week: str, signals: dict[str, Any], history: list[dict[str, Any]]
) -> dict[str, Any]:
    """Refusal rate above the pooled trailing weeks by the configured margin, with Wilson
    intervals that do not overlap (so a noisy small week does not fire)."""
    trailing = _trailing(settings, week, history, "refusal_count", "records")
    if not trailing or not signals["records"]:
        return {"alarm": False, "reason": "no trailing weeks to compare with", "baseline_rate": None}
    return _above_baseline("refusal rate", signals["refusal_rate"], signals["refusal_rate_ci"][0], trailing,
                           "refusal_count", "records", settings.signals.refusal_alarm_margin)


def _trailing(settings: Settings, week: str, history: list[dict[str, Any]], count: str, total: str) -> list[dict[str, Any]]:
    """The last `signals.trailing_weeks` weeks before `week` that measured `count` out of `total`."""
    return [
        row for row in history
        if week_step(row["week"]) < week_step(week) and row.get(total) and row.get(count) is not None
    ][-settings.signals.trailing_weeks :]


def _above_baseline(name: str, rate: float, low: float, trailing: list[dict[str, Any]], count: str, total: str,
                    margin: float) -> dict[str, Any]:
    """Alarm when `rate` beats the trailing weeks' pooled rate by `margin` and its Wilson interval (lower
    bound `low`) lies wholly above theirs."""
    base_k = sum(row[count] for row in trailing)
    base_n = sum(row[total] for row in trailing)
    base_rate = base_k / base_n
    base_lo, base_hi = wilson_interval(base_k, base_n)
    return {
        "alarm": rate >= base_rate + margin and low > base_hi,
        "baseline_rate": base_rate,
        "baseline_ci": [base_lo, base_hi],
        "baseline_weeks": [row["week"] for row in trailing],
        "reason": (
            f"{name} {rate:.1%} vs {base_rate:.1%} over the last {len(trailing)} weeks "
            f"(margin {margin:.0%}, intervals {'do not overlap' if low > base_hi else 'overlap'})"
        ),
    }


def plot_trend(settings: Settings, history: list[dict[str, Any]], path: Path, weeks: int = 12) -> Path:
    """A PNG of the last `weeks` weeks: the signals on one axis, KL on a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recent = history[-weeks:]
    labels = [row["week"] for row in recent]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for key in SIGNAL_KEYS:
        values = [row.get(key) for row in recent]
        top.plot(labels, [float("nan") if v is None else v for v in values], marker="o", label=key)
    top.set_ylabel("rate")
    top.legend(loc="upper left", fontsize="small")
    top.set_title("llm-flywheel weekly signals")
    kls = [float("nan") if row.get("kl") is None else row["kl"] for row in recent]
    bottom.plot(labels, kls, marker="o", color="black", label="KL")
    bottom.axhline(settings.drift.same_below, color="grey", linestyle=":", label="slight")
    bottom.axhline(settings.drift.drift_above, color="red", linestyle=":", label="drift")
    bottom.set_ylabel("KL(current || reference)")
    bottom.legend(loc="upper left", fontsize="small")
    plt.setp(bottom.get_xticklabels(), rotation=45, ha="right")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
