"""The `flywheel` console script: parse, load settings, call a task or a flow, print the result.

Conventions (DESIGN.md section 13): every command takes --config and --workspace; with --json the
last line of stdout is exactly one JSON object, human output goes before it or to stderr. Exit codes:
0 done, 1 a gate or check said no, 2 bad usage or bad input (the message names the file/row/key).
Heavy libraries (torch, prefect, presidio) are imported inside the commands that need them so that
`flywheel --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tasks.config import ConfigError, Settings, load_settings

app = typer.Typer(
    help="llm-flywheel: monitor a self-hosted LLM, curate its failures, retrain a LoRA adapter, "
    "and promote it through a reviewed canary.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
logs_app = typer.Typer(help="Validate and summarise production logs.", no_args_is_help=True)
annotate_app = typer.Typer(help="Label Studio round trip for failure cases.", no_args_is_help=True)
model_app = typer.Typer(help="The base model: build the embedded one.", no_args_is_help=True)
stack_app = typer.Typer(help="A local Prefect server + worker + MLflow server with the deployments.", no_args_is_help=True)
registry_app = typer.Typer(help="The MLflow model registry: champion, canary, reviews.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(logs_app, name="logs")
app.add_typer(annotate_app, name="annotate")
app.add_typer(registry_app, name="registry")
app.add_typer(stack_app, name="stack")
app.add_typer(model_app, name="model")

ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        "-c",
        envvar="FLYWHEEL_CONFIG",
        help="YAML file laid over the embedded defaults (see configs/default.yaml).",
    ),
]
WorkspaceOpt = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Folder for all run-time output [default: ./workspace]."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object as the last line of stdout.")]


def check_failed(message: str) -> typer.Exit:
    """A gate or check said no: say why on stderr and exit 1 (the result is printed before)."""
    print(f"check failed: {message}", file=sys.stderr)
    return typer.Exit(1)


def settings_for(config: Path | None, workspace: Path | None, **overrides: Any) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    if workspace is not None:
        values["paths.workspace"] = str(workspace)
    return load_settings(config, values)


def emit(result: dict[str, Any], as_json: bool, human: str | None = None) -> None:
    """Print a human summary (to stderr when --json is on) and, with --json, the JSON line."""
    if human:
        print(human, file=sys.stderr if as_json else sys.stdout)
    if as_json:
        print(json.dumps(result, default=str, ensure_ascii=False))
    elif not human:
        print(json.dumps(result, default=str, ensure_ascii=False, indent=2))


def table(rows: list[tuple[str, Any]]) -> str:
    width = max((len(name) for name, _ in rows), default=0)
    return "\n".join(f"{name:<{width}}  {_fmt(value)}" for name, value in rows)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


# ----------------------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective configuration: embedded defaults, then --config, then flags."""
    settings = settings_for(config, workspace)
    if as_json:
        emit(settings.dump(), True)
    else:
        import yaml

        print(yaml.safe_dump(settings.dump(), sort_keys=False, allow_unicode=True), end="")


# ------------------------------------------------------------------------------------------ logs

SourcesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Log files, folders or globs [default: logs.sources, else <workspace>/logs]."),
]
SinceOpt = Annotated[Optional[str], typer.Option(help="Start of the window, ISO date/time (inclusive).")]
UntilOpt = Annotated[Optional[str], typer.Option(help="End of the window, ISO date/time (exclusive).")]


@logs_app.command("validate")
def logs_validate(
    sources: SourcesArg = None,
    quarantine: Annotated[Optional[Path], typer.Option(help="Where rejected rows go [default: logs.quarantine in the workspace].")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 when any row was quarantined or any file could not be read.")] = False,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Schema-check logs: rows that are not JSON, miss a field, carry a bad timestamp or type, are not
    UTF-8 or are too large go to the quarantine file with their source line and reason; a file that
    cannot be read at all (truncated, corrupt) is named and set aside, and the other files load. Exits 1
    when every row was quarantined (usually the wrong logs.preset or logs.columns), or with --strict when
    any was or a file could not be read."""
    from tasks.logs import load_window

    settings = settings_for(config, workspace)
    result = load_window(settings, sources, quarantine=quarantine or True)
    summary = result.summary()
    emit(summary, as_json, table([
        ("read", summary["read"]), ("accepted", summary["accepted"]), ("quarantined", summary["quarantined"]),
        *[(f"  {reason}", count) for reason, count in summary["reasons"].items()],
        ("unreadable files", len(result.unreadable_files)),
        ("quarantine file", summary["quarantine"]), *[("warning", w) for w in summary["warnings"]],
    ]))
    if result.read and not result.accepted:
        raise check_failed(
            f"all {result.read} rows were quarantined (see {summary['quarantine']}): is the mapping right? "
            f"logs.preset is {settings.logs.preset!r} (flywheel | openai_chat); logs.columns maps other field names"
        )
    if strict and (result.quarantined or result.unreadable_files):
        unreadable = ", ".join(item["source"] for item in result.unreadable_files)
        raise check_failed(f"{result.quarantined} rows quarantined (see {summary['quarantine']})"
                           + (f"; unreadable files: {unreadable}" if unreadable else ""))


@logs_app.command("stats")
def logs_stats(
    sources: SourcesArg = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarise logs: volume, users, time span, model versions, weeks, feedback."""
    from tasks.logs import load_window, log_stats

    settings = settings_for(config, workspace)
    stats = log_stats(load_window(settings, sources, since, until))
    emit(stats, as_json, table([(key, value) for key, value in stats.items() if key != "files"]))


# ----------------------------------------------------------------------------------- monitoring


def _rate_row(name: str, rate: float | None, ci: list[float] | None) -> tuple[str, str]:
    if rate is None:
        return name, "n/a"
    return name, f"{rate:.2%}" + (f"  [{ci[0]:.2%}, {ci[1]:.2%}]" if ci else "")


@app.command()
def signals(
    sources: SourcesArg = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The four quality signals over a window of logs: refusal, re-ask and thumbs-down rates (with
    Wilson 95% intervals) and feedback coverage, overall and per model version. The sampled
    hallucination-risk signal needs a model and runs in `flywheel monitor`."""
    from tasks.logs import load_window
    from tasks.signals import compute_signals

    settings = settings_for(config, workspace)
    result = compute_signals(load_window(settings, sources, since, until).table, settings.signals)
    emit(result, as_json, table([
        ("records", result["records"]),
        _rate_row("refusal rate", result["refusal_rate"], result["refusal_rate_ci"]),
        _rate_row("re-ask rate", result["reask_rate"], result["reask_rate_ci"]),
        _rate_row("thumbs-down rate", result["thumbs_down_rate"], result["thumbs_down_rate_ci"]),
        _rate_row("feedback coverage", result["feedback_coverage"], result["feedback_coverage_ci"]),
    ]))


@app.command()
def drift(
    reference: Annotated[list[str], typer.Option("--reference", help="Reference prompts: JSONL with a 'prompt' field (and optionally a 'group' field: conversation, session or user), text with one prompt per line, or log files/globs (flywheel or openai_chat shape; sessions, else users, become groups).")],
    current: Annotated[list[str], typer.Option("--current", help="Current prompts, same forms as --reference.")],
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Input drift between two prompt sets: KL(current||reference) with bands (< 0.1 same, 0.1-0.5
    slight, > 0.5 drift), a no-drift baseline from resampling the reference by conversation/session
    (drift.null_resample_by), JS distance, PSI, and the terms that explain it. Exits 1 on a drift alert."""
    from tasks.drift import compute_drift

    settings = settings_for(config, workspace)
    reference_prompts, reference_groups = read_prompts(settings, reference)
    current_prompts, _ = read_prompts(settings, current)
    result = compute_drift(reference_prompts, current_prompts, settings.drift, reference_groups=reference_groups)
    rows = [("band", result["band"]), ("alert", result["alert"]), ("KL", result.get("kl")),
            ("no-drift KL", result.get("null_kl")), ("JS distance", result.get("js")), ("PSI", result.get("psi")),
            ("prompts", f"{result['n_current']} current, {result['n_reference']} reference"),
            ("null resampled by", f"{result.get('null_resampled_by')} ({result.get('null_groups')} groups)")]
    rows += [(f"  {t['term']}", f"{t['current_share']:.2%} now vs {t['reference_share']:.2%}") for t in result.get("top_terms", [])]
    emit(result, as_json, table(rows))
    if result["alert"]:
        raise check_failed(f"input drift: KL {result['kl']:.3f} ({result['band']})")


def read_prompts(settings: Settings, paths: list[str]) -> tuple[list[str], list[str | None]]:
    """Prompts and their null-baseline groups from prompt files (JSONL with 'prompt' / one per line)
    or logs. A JSONL file is read as logs when its first row looks like a log record: the flywheel
    shape, or the openai_chat shape (messages/choices), which is then mapped with that preset
    whatever logs.preset says. Logs of which no row could be read are an error naming the mapping."""
    from tasks.drift import load_prompt_records, prompt_groups
    from tasks.logs import load_window

    prompts: list[str] = []
    groups: list[str | None] = []
    logs_by_preset: dict[str, list[str]] = {}
    for path in paths:
        shape = _file_shape(Path(path))
        if shape == "prompts":
            file_prompts, file_groups = load_prompt_records(Path(path))
            prompts += file_prompts
            groups += file_groups
        else:
            logs_by_preset.setdefault(shape or settings.logs.preset, []).append(path)
    for preset, sources in logs_by_preset.items():
        mapped = settings.model_copy(update={"logs": settings.logs.model_copy(update={"preset": preset})})
        loaded = load_window(mapped, sources, quarantine=False)
        if loaded.read and not loaded.accepted:
            raise ValueError(f"{', '.join(sources)}: none of the {loaded.read} rows could be read as logs "
                             f"(logs.preset {preset}; {dict(loaded.reasons)}): set logs.preset (flywheel | openai_chat) "
                             "or logs.columns to map the file's fields, or pass a prompt file")
        table_ = loaded.table
        prompts += table_.column("prompt").to_pylist()
        groups += prompt_groups(table_, settings.drift.null_resample_by) or [None] * table_.num_rows
    return prompts, groups


def _file_shape(path: Path) -> str | None:
    """"prompts" for a prompt file, "flywheel" / "openai_chat" for a JSONL log of that shape, None
    for anything else (a folder, a glob, Parquet, JSONL rows without a 'prompt' string: logs read
    with the configured preset and logs.columns)."""
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return "prompts"
    if suffix not in (".jsonl", ".ndjson"):
        return None
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return "prompts"  # load_prompt_records names the line and the expected shape
    if not isinstance(row, dict):
        return "prompts"
    if "messages" in row or "choices" in row:
        return "openai_chat"
    if "request_id" in row or "response" in row:
        return "flywheel"
    return "prompts" if isinstance(row.get("prompt"), str) else None


@app.command()
def monitor(
    week: Annotated[Optional[str], typer.Option(help="ISO week, e.g. 2026-W03 [default: the last complete week].")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the weekly monitoring flow: signals, drift, MLflow run, Prefect dashboard artifact, and
    the retraining decision. Without a Prefect server (PREFECT_API_URL) a temporary one is started for
    the run; it stops with the command, however the command ends."""
    from flows.monitoring import weekly_monitoring
    from flows.temporary_server import temporary_prefect_server

    with temporary_prefect_server():
        result = weekly_monitoring(week=week, config=str(config) if config else None,
                                   workspace=str(workspace) if workspace else None)
    signals_, drift_ = result["signals"], result["drift"]
    emit(result, as_json, table([
        ("week", result["week"]),
        _rate_row("refusal rate", signals_["refusal_rate"], signals_["refusal_rate_ci"]),
        _rate_row("re-ask rate", signals_["reask_rate"], signals_["reask_rate_ci"]),
        _rate_row("thumbs-down rate", signals_["thumbs_down_rate"], signals_["thumbs_down_rate_ci"]),
        ("drift", drift_.get("band") + (f" (KL {drift_['kl']:.3f})" if drift_.get("kl") is not None else "")),
        ("retraining triggered", result["triggered"]),
        *[("  because", reason) for reason in result["decision"]["reasons"]],
    ]))


# ------------------------------------------------------------------------------------ simulator


@app.command()
def simulate(
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for logs/ and ground truth [default: the workspace].")] = None,
    weeks: Annotated[Optional[int], typer.Option(help="Weeks of traffic [default: simulate.weeks].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed; the same seed gives byte-identical files.")] = None,
    launch_week: Annotated[Optional[int], typer.Option(help="Week the v2 products launch (the drift).")] = None,
    records_per_week: Annotated[Optional[int], typer.Option(help="Requests per simulated week.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="jsonl or parquet.")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Simulate production traffic of a support shop: knowledge base v1, new v2 products launched
    mid-way, users who re-ask and press thumbs-down, PII in prompts; ground truth written beside."""
    from tasks.simulate import simulate as run_simulation

    settings = settings_for(
        config, workspace,
        **{"simulate.weeks": weeks, "simulate.seed": seed, "simulate.launch_week": launch_week,
           "simulate.records_per_week": records_per_week, "simulate.format": fmt},
    )
    result = run_simulation(settings.simulate, out or settings.workspace, data_dir=settings.paths.data_dir)
    emit(result.model_dump(), as_json, table([
        ("records", result.records), ("weeks", len(result.weeks)), ("launch week", result.launch_week),
        ("log files", len(result.files)), ("ground truth", result.ground_truth),
        ("records/s", round(result.records_per_s)),
    ]))


# ------------------------------------------------------------------------------------- curation


@app.command()
def extract(
    out: Annotated[Path, typer.Option("--out", help="Cases file to write (.parquet or .jsonl).")],
    sources: SourcesArg = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Extract failure cases (refusals, re-asks, thumbs-down, answers the docs do not support) from a
    window of logs, with users replaced by a keyed hash and duplicates removed."""
    from tasks.cycle import pii_key
    from tasks.extract import extract_cases, unsupported_flags
    from tasks.logs import load_window
    from tasks.windows import parse_time

    settings = settings_for(config, workspace)
    result = load_window(settings, sources, since, until)
    summary = extract_cases(result.table, settings.signals, settings.extract, key=pii_key(settings), out_path=out,
                            unsupported=unsupported_flags(settings, parse_time(until) if until else None))
    emit(summary, as_json, table([("cases", summary["cases"]), *summary["by_kind"].items(),
                                  ("duplicates removed", summary["duplicates_removed"]), ("written to", out)]))


@app.command()
def mask(
    in_path: Annotated[Path, typer.Option("--in", help="Records to mask (.jsonl or .parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Masked records to write (.jsonl or .parquet).")],
    fields: Annotated[Optional[str], typer.Option(help="Comma-separated fields to mask [default: prompt,response,followup,correction].")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mask PII with Presidio: keyed pseudonyms (<PERSON_1a2b3c4d>), fail-closed (a record that
    cannot be masked is dropped and counted), a re-scan of the output, and an independent shape scan of
    every column written (its hits masked, or a failure with pii.leak_scan: fail). Exits 1 on a leak
    nothing masked."""
    from tasks.cycle import pii_key
    from tasks.pii import DEFAULT_FIELDS, PiiLeakError, mask_file

    settings = settings_for(config, workspace)
    audit = out.with_name(out.stem + ".pii_audit.json")
    try:
        report = mask_file(in_path, out, settings.pii, key=pii_key(settings),
                           fields=fields.split(",") if fields else DEFAULT_FIELDS, audit_path=audit)
    except PiiLeakError as leak:
        raise check_failed(f"{leak} (audit: {audit})") from None
    emit(report, as_json, table([("records", report["records"]), ("masked", report["masked_records"]),
                                 ("dropped (fail-closed)", report["dropped"]), ("leaks after re-scan", report["leaks"]),
                                 ("  of which masked by the scan", report["leaks_masked"]),
                                 *[(f"  {kind}", n) for kind, n in report["entities"].items()], ("audit", audit)]))


@app.command("pii-eval")
def pii_eval(
    dataset: Annotated[Path, typer.Option("--dataset", help="Span-labelled set in presidio-research format (JSON list).")],
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N documents.")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Precision, recall and F2 of the masking on a labelled set, per entity and overall, and docs/s."""
    from tasks.pii import evaluate_pii

    settings = settings_for(config, workspace)
    result = evaluate_pii(dataset, settings.pii, limit=limit)
    rows = [("precision", result["precision"]), ("recall", result["recall"]), ("F2", result["f2"]),
            ("docs/s", result["docs_per_s"])]
    rows += [(f"  {kind}", f"P {v['precision']:.3f}  R {v['recall']:.3f}  F2 {v['f2']:.3f}") for kind, v in result["per_entity"].items()]
    emit(result, as_json, table(rows))


@annotate_app.command("export")
def annotate_export(
    cases: Annotated[Path, typer.Option("--cases", help="Cases file from `flywheel extract` / `mask`.")],
    out: Annotated[Path, typer.Option("--out", help="Label Studio import JSON to write (label_config.xml goes beside it).")],
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write cases as Label Studio tasks, with a labelling config for the closed label set."""
    from tasks.annotate import export_tasks

    settings = settings_for(config, workspace)
    summary = export_tasks(cases, out, settings.annotation.labels)
    emit(summary, as_json, f"{summary['tasks']} tasks -> {out} (labelling config: {summary['config']})")


@annotate_app.command("import")
def annotate_import(
    files: Annotated[list[Path], typer.Argument(help="Label Studio export JSON, CSV (item,annotator,label[,corrected_response]) or JSONL files.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for annotations.jsonl and quarantine.jsonl.")],
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import annotations from several annotators; rows that cannot be used (malformed, no case id,
    annotator or label, a label outside annotation.labels, cancelled, superseded) are quarantined with
    file, row and reason. `flywheel agreement` applies the same rules."""
    from tasks.annotate import import_annotations

    settings = settings_for(config, workspace)
    summary = import_annotations(files, out, settings.annotation.labels)
    emit(summary, as_json, table([("annotations", summary["annotations"]), ("items", summary["items"]),
                                  ("annotators", summary["annotators"]), ("quarantined", summary["quarantined"]),
                                  *[(f"  {reason}", n) for reason, n in summary["reasons"].items()],
                                  ("quarantine file", summary["quarantine"])]))


@app.command()
def agreement(
    annotations: Annotated[Path, typer.Option("--annotations", help="Label Studio export JSON, CSV with header item,annotator,label, or JSONL of annotations.")],
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Inter-annotator agreement (Krippendorff's alpha, Fleiss' and Cohen's kappa) and the gate
    decision: pass, filter (keep unanimous items) or block. Ratings are judged by the same rules as
    `annotate import` (labels from annotation.labels; cancelled, malformed and superseded rows and the
    adjudicator's verdicts left out), and every exclusion is listed. Exits 1 on block."""
    from tasks.annotate import agreement_from_file

    settings = settings_for(config, workspace)
    result = agreement_from_file(annotations, settings.annotation)

    def shown(value: Any) -> Any:
        return "n/a" if value is None else value

    emit(result, as_json, table([
        ("items", result["n_items"]), ("annotators", result["n_annotators"]),
        ("Krippendorff's alpha", shown(result["krippendorff_alpha"])), ("95% interval", shown(result["alpha_ci"])),
        ("Fleiss' kappa", shown(result["fleiss_kappa"])), ("Cohen's kappa", shown(result["cohen_kappa"])),
        ("excluded ratings", result["excluded"]["ratings"]),
        *[(f"  {kind}", n) for kind, n in result["excluded"]["reasons"].items()],
        *[(f"  annotator {a['annotator']}", a["reason"]) for a in result["excluded_annotators"]],
        ("decision", result["decision_reason"]),
    ]))
    if result["decision"] == "block":
        raise check_failed("the cycle is blocked: " + result["decision_reason"].removeprefix("block: "))


# --------------------------------------------------------------------------- evaluation, registry


@app.command()
def evaluate(
    candidate: Annotated[str, typer.Option("--candidate", help="Adapter folder or registry version to evaluate.")],
    against: Annotated[str, typer.Option("--against", help="champion, a version, an adapter folder, base, or none.")] = "champion",
    new_cases: Annotated[Optional[Path], typer.Option("--new-cases", help="Held-out curated cases (JSONL) added as the new_cases suite.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for report.json/report.md [default: next to the candidate].")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the regression, OOD, adversarial (and new_cases) suites on candidate and champion, and
    check the gates. Exits 1 when a gate fails."""
    from tasks.evaluate import evaluate_adapter

    settings = settings_for(config, workspace)
    result = evaluate_adapter(settings, candidate, against=against, out_dir=out, new_cases=new_cases)
    rows = [
        (f"{suite}.{metric}", f"{v['candidate']:.3f} vs {v['champion']:.3f}" if v.get("champion") is not None else f"{v['candidate']:.3f}")
        for suite, metrics in result["suites"].items()
        for metric, v in metrics.items()
        if isinstance(v, dict) and v.get("candidate") is not None
    ]
    emit(result, as_json, table([*rows, ("gate", "passed" if result["passed"] else "FAILED")]))
    if not result["passed"]:
        raise check_failed("the candidate failed its evaluation gate (see report.md)")


def registry_call(config: Path | None, workspace: Path | None, action: str, *args: Any, **kwargs: Any) -> dict:
    """Run one Registry method; its rule violations are a 'no' (exit 1), not a crash. Bad input (no such
    version, a blank reviewer: RegistryInputError, a ValueError) exits 2 through main()."""
    from tasks.registry import Registry, RegistryRuleError

    settings = settings_for(config, workspace)
    registry = Registry(settings)
    try:
        result = getattr(registry, action)(*args, **kwargs)
    except RegistryRuleError as refused:
        raise check_failed(str(refused)) from None
    if action in ALIAS_MOVES:  # the model server at serving.url follows at once (it polls anyway)
        from serving.notify import tell_server

        reloaded = tell_server(settings, say=lambda line: print(line, file=sys.stderr))
        result = {**result, "server": reloaded} if reloaded is not None else result
    return result


ALIAS_MOVES = ("promote", "rollback", "review")  # registry calls that may change what the model server serves


@registry_app.command("status")
def registry_status(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Show the champion and canary aliases and every version's gate and latest review (of how many).
    No champion means the base model is served without an adapter."""
    status = registry_call(config, workspace, "status")
    lines = [f"champion: {status['champion'] or 'none (the base model is served, no adapter)'}",
             f"canary:   {status['canary']}", ""]
    for v in status["versions"]:
        reviews = v.get("reviews") or []
        latest = f"{reviews[-1]['decision']} by {reviews[-1]['reviewer']} ({len(reviews)} in all)" if reviews else "-"
        lines.append(
            f"v{v['version']:<4} {','.join(v.get('aliases') or []) or '-':<18} cycle {v.get('cycle_id') or '-':<24} "
            f"gate {v.get('gate') or '-':<7} review {latest}"
        )
    emit(status, as_json, "\n".join(lines))


def _review(version: str, decision: str, reviewer: str, comment: str, config, workspace, as_json) -> None:
    result = registry_call(config, workspace, "review", version, decision=decision, reviewer=reviewer, comment=comment)
    human = f"version {version}: {decision} by {reviewer}"
    if decision == "approve":  # approval means "ramp it": the canary-ramp deployment starts on this event
        from flows.ramp import APPROVED_EVENT, request_ramp

        result["ramp_requested"] = request_ramp(settings_for(config, workspace), version, reviewer)
        human += (f"; ramp requested (event {APPROVED_EVENT})" if result["ramp_requested"] else
                  f"; no Prefect server (PREFECT_API_URL) to start the ramp: run `flywheel ramp {version}`")
    emit(result, as_json, human)


ReviewerOpt = Annotated[str, typer.Option("--reviewer", help="Who decides (recorded on the version).")]
CommentOpt = Annotated[str, typer.Option("--comment", help="Why (recorded on the version).")]


@app.command()
def approve(version: str, reviewer: ReviewerOpt, comment: CommentOpt, config: ConfigOpt = None,
            workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Approve a canary: it ramps on live traffic, then is promoted (or halted). With a Prefect server
    (PREFECT_API_URL) the approval emits flywheel.canary.approved, which starts the canary-ramp deployment;
    without one, run `flywheel ramp VERSION`. Every review is kept; the latest counts. Refused (exit 1) for
    a rejected version (a rejection is final) and, with review.require_distinct_override, for the reviewer
    who overrode its failed gate."""
    _review(version, "approve", reviewer, comment, config, workspace, as_json)


@app.command()
def reject(version: str, reviewer: ReviewerOpt, comment: CommentOpt, config: ConfigOpt = None,
           workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Reject a version: it loses the canary alias and can never be approved or promoted again (register
    the adapter again to try again). The serving champion cannot be rejected: roll it back first."""
    _review(version, "reject", reviewer, comment, config, workspace, as_json)


@registry_app.command("override")
def registry_override(version: str, reviewer: ReviewerOpt,
                      reason: Annotated[str, typer.Option("--reason", help="Why the failed gate may be ignored.")],
                      config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Record a reviewer's override of a failed evaluation gate (needed before promoting it). With
    review.require_distinct_override the reviewer may not be one who approved the version."""
    result = registry_call(config, workspace, "override_gate", version, reviewer=reviewer, reason=reason)
    emit(result, as_json, f"version {version}: gate overridden by {reviewer}")


ActorOpt = Annotated[Optional[str], typer.Option("--actor", help="Who makes this move, for the audit history [default: for promote, the approving reviewer; else registry.actor, else $FLYWHEEL_ACTOR, else recorded as unattributed].")]


@app.command()
def promote(version: str, actor: ActorOpt = None, config: ConfigOpt = None, workspace: WorkspaceOpt = None,
            as_json: JsonOpt = False) -> None:
    """Move the champion alias to an approved version (the previous champion is recorded)."""
    result = registry_call(config, workspace, "promote", version, actor=actor)
    emit(result, as_json, f"champion: {result['from']} -> {result['to']} in {result['seconds']:.3f} s")


@app.command()
def rollback(to: Annotated[Optional[str], typer.Option("--to", help="Version to return to, or 'base' for the base model without an adapter [default: the previous champion; the base after the first champion].")] = None,
             reviewer: Annotated[Optional[str], typer.Option("--reviewer", help="Who overrides a rejection (with --override-reason).")] = None,
             override_reason: Annotated[Optional[str], typer.Option("--override-reason", help="Why a version rejected since it served may serve again (recorded on it and in the audit).")] = None,
             actor: ActorOpt = None, config: ConfigOpt = None, workspace: WorkspaceOpt = None,
             as_json: JsonOpt = False) -> None:
    """Move the champion alias back to the previous champion, or to a given earlier champion. Rolling back
    the first champion serves the base model again (the champion alias is removed). A version rejected
    since it served needs --reviewer and --override-reason."""
    result = registry_call(config, workspace, "rollback", to, reviewer=reviewer, override_reason=override_reason,
                           actor=actor)
    emit(result, as_json, f"champion: {result['from']} -> {result['to']} in {result['seconds']:.3f} s")


# --------------------------------------------------------------------------------------- models


@model_app.command("bootstrap")
def model_bootstrap(
    out: Annotated[Optional[Path], typer.Option("--out", help="Model folder [default: <workspace>/models/base].")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the embedded tiny base model (tokenizer + Qwen2-style causal LM pre-trained on the
    knowledge base, with honest refusals for unknown products). Cached by content: a second run
    with the same knowledge base and recipe reuses it."""
    from tasks.base_model import bootstrap_for

    settings = settings_for(config, workspace)
    built = bootstrap_for(settings, out, progress=lambda message: print(message, file=sys.stderr))
    emit(built, as_json, table([("path", built["path"]), ("parameters", built["params"]),
                                ("seconds", built["seconds"]), ("cached", built["cached"])]))


@app.command()
def train(
    dataset: Annotated[Path, typer.Option("--dataset", help="Folder with train.jsonl and val.jsonl (prompt/response rows).")],
    out: Annotated[Path, typer.Option("--out", help="Adapter folder; checkpoints go to <out>/checkpoints.")],
    base: Annotated[Optional[Path], typer.Option("--base", help="Base model folder [default: model.base or the embedded one].")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a LoRA adapter (peft) with the config's train: settings. CUDA when present (bf16 from
    Ampere on; train.precision overrides), CPU in fp32 otherwise. A rerun after an interruption
    resumes from the newest complete checkpoint in <out>/checkpoints (one cut short is skipped and
    named). On several processes (DDP): `torchrun --nproc_per_node N -m flows.cli train ...`;
    train.batch_size stays the global batch, and only the first process writes and prints."""
    from tasks.base_model import resolve_base_model
    from tasks.train import train_adapter

    settings = settings_for(config, workspace)
    result = train_adapter(dataset, out, settings.train, base_path=base or resolve_base_model(settings), progress=True)
    if os.environ.get("RANK", "0") != "0":
        return  # one JSON line per command, from the first process
    emit(result, as_json, table([("adapter", result["adapter"]), ("steps", result["steps"]),
                                 ("train loss", result["train_loss"]), ("val loss", result["val_loss"]),
                                 ("device", result.get("device")), ("seconds", result["seconds"]),
                                 ("resumed from", result.get("resumed_from")),
                                 *[("skipped (incomplete)", f"{item['checkpoint']}: {item['reason']}")
                                   for item in result.get("skipped_checkpoints", [])]]))


# ----------------------------------------------------------------------------------- retraining


@app.command()
def retrain(
    window: Annotated[Optional[str], typer.Option(help="2026-Q1, START..END (ISO dates) or all [default: the last complete quarter].")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Run every stage again instead of reusing finished ones.")] = False,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the quarterly retraining flow: extract, mask, annotate, agreement, dataset, LoRA training,
    evaluation, canary registration. A rerun skips finished stages (training resumes from its
    checkpoint). Exits 1 when the canary fails its gate or the cycle stops."""
    from tasks.windows import parse_window

    parse_window(window)  # a bad window is exit 2 before any server or folder is started
    from flows.retraining import quarterly_retraining
    from flows.temporary_server import temporary_prefect_server

    with temporary_prefect_server():
        result = quarterly_retraining(window=window, config=str(config) if config else None,
                                      workspace=str(workspace) if workspace else None, fresh=fresh)
    rows = [("cycle", result["cycle_id"]), *[(f"  {name}", status) for name, status in result["stages"].items()],
            ("canary version", result["canary_version"]), ("gate", result["gate"])]
    if result.get("stopped"):
        rows.append(("stopped", result["stopped"]))
    elif result["canary_version"]:
        rows.append(("next", f"flywheel approve {result['canary_version']} --reviewer NAME --comment TEXT"))
    emit(result, as_json, table(rows))
    if not result["passed"]:
        raise check_failed(result.get("stopped") or "the canary failed its evaluation gate (see 06_eval/report.md)")


# ---------------------------------------------------------------------------------------- serve


@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on [default: serving.host, 127.0.0.1]. Any "
                                                "other than loopback exposes the server; its admin endpoints then "
                                                "need $FLYWHEEL_ADMIN_TOKEN set, else they are off.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on [default: serving.port, 8000].")] = None,
    backend: Annotated[Optional[str], typer.Option(help="local: the base model and LoRA adapters in this process; "
                                                   "vllm: a gateway to the vLLM server at --upstream "
                                                   "[default: serving.backend].")] = None,
    upstream: Annotated[Optional[str], typer.Option(help="With --backend vllm: the vLLM OpenAI server, e.g. "
                                                    "http://127.0.0.1:8001 [default: serving.upstream].")] = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Print a line per request.")] = True,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
) -> None:
    """Serve the model until stopped: the registry's champion (the bare base before the first promotion)
    on POST /generate and the OpenAI-compatible /v1/chat/completions, /v1/completions and /v1/models;
    POST /feedback; GET /healthz, /readyz, /metrics. Every answered request is logged into the
    workspace's daily log files (what `flywheel monitor` reads); champion and canary follow the registry
    (polled every serving.poll_s, at once on POST /admin/reload) and swap without failing a request.
    Ctrl-C or SIGTERM stops it gracefully: requests in flight finish and every log record is written.
    Other knobs are in the config's serving section (configs/default.yaml)."""
    from tasks.base_model import ModelError

    from serving.server import serve as run_server

    settings = settings_for(config, workspace, **{"serving.host": host, "serving.port": port,
                                                  "serving.backend": backend, "serving.upstream": upstream})
    try:
        run_server(settings, host=settings.serving.host, port=settings.serving.port, access_log=access_log)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2) from None


# ---------------------------------------------------------------------------------------- stack


@stack_app.command("up")
def stack_up(
    port: Annotated[int, typer.Option(help="Prefect server port (UI and API).")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="MLflow server port.")] = 5000,
    serve_port: Annotated[int, typer.Option(help="Model server port (`flywheel serve`); 0: do not start it. It starts "
                                            "when the workspace has a base model.")] = 8000,
    database: Annotated[Optional[str], typer.Option(
        envvar="FLYWHEEL_DATABASE_URL", show_envvar=True,
        help="postgresql://USER:PASSWORD@HOST:PORT/NAME: the Prefect server and MLflow keep their state in "
             "databases NAME_prefect and NAME_mlflow there (created when missing) instead of SQLite files in the "
             "workspace. The password can also come from PGPASSWORD; it is never printed.")] = None,
    artifacts: Annotated[Optional[str], typer.Option(
        help="Where MLflow stores artifacts (adapters, reports): a folder or s3://BUCKET/PREFIX (credentials and "
             "endpoint from the AWS variables) [default: <workspace>/mlartifacts].")] = None,
    timeout: Annotated[float, typer.Option(min=10, help="Seconds to wait for every part to be up and deployed.")] = 120.0,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a Prefect server, the flywheel-pool worker, an MLflow server and the model server (`flywheel
    serve` on --serve-port, when the workspace has a base model) on this machine, and deploy prefect.yaml
    (run from the repository root). Flows run by the worker, and `flywheel`
    commands in a shell with the printed exports, use the MLflow server. Stop them with `flywheel
    stack down`."""
    from flows.local_stack import StackError, start_local_stack

    settings = settings_for(config, workspace)
    try:
        started = start_local_stack(settings.workspace.resolve(), port=port, mlflow_port=mlflow_port, config=config,
                                    serve_port=serve_port or None, database=database, artifacts=artifacts,
                                    timeout_s=timeout)
    except StackError as err:
        print(f"error: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    emit(started, as_json, table([("Prefect UI", started["prefect_ui"]), ("MLflow UI", started["mlflow_ui"]),
                                  ("database", started["database"]), ("artifacts", started["artifacts"]),
                                  ("model server", started["model_server"]),
                                  ("logs", started["logs"]),
                                  ("in your shell", f"export PREFECT_API_URL={started['prefect_api']} "
                                                    f"FLYWHEEL_CONFIG={started['env']['FLYWHEEL_CONFIG']}")]))


@stack_app.command("down")
def stack_down(config: ConfigOpt = None, workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
    """Stop the processes `flywheel stack up` started for this workspace."""
    from flows.local_stack import stop_local_stack

    settings = settings_for(config, workspace)
    stopped = stop_local_stack(settings.workspace.resolve())
    emit(stopped, as_json, table(list(stopped["stopped"].items())) or "nothing was running")


# ----------------------------------------------------------------------------------------- demo


@app.command()
def demo(
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Approve the canary when its gate passes and ramp it on live traffic through a real model server (week 1 at a small share with its A/B table, then to 100% and promotion), then simulate the weeks after; otherwise stop at 'awaiting review'.")] = False,
    bad_canary: Annotated[bool, typer.Option("--bad-canary", help="Register an adapter trained to refuse everything as the canary instead and ramp it: the ramp halts it at the first step and the champion stays (implies --auto-approve).")] = False,
    weeks_after: Annotated[int, typer.Option(min=1, help="Weeks simulated with the new champion after the promotion.")] = 2,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Prefect's own flow and task run logs as well.")] = False,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML file laid over the embedded defaults [default: configs/demo.yaml].")] = None,
    workspace: Annotated[Optional[Path], typer.Option("--workspace", "-w", help="Demo output folder, cleared on every run [default: workspace/demo].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on a simulated quarter, on this machine (no GPU or network; the model server it
    starts listens on a free port of 127.0.0.1): build the base model, simulate 13 weeks of users answered
    by it (new products launch in week 7), monitor every week, retrain, evaluate, register the canary,
    approve it and ramp it on live traffic through `flywheel serve` (--auto-approve: week 1 at a small
    share with its A/B table, then to 100% and promotion), two more weeks with the new champion, and a before/after table: what monitoring saw (refusals, re-asks,
    answers the docs do not support) beside what the simulator knows (accuracy, wrong answers). About 9
    minutes on 2 CPU cores the first time, 7 once the base model is built."""
    if not verbose:  # the demo prints its own progress
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    from flows.demo import check_workspace, demo_settings, flywheel_demo
    from tasks.report import before_after_rows

    from flows.temporary_server import temporary_prefect_server

    check_workspace(demo_settings(str(config) if config else None, str(workspace) if workspace else None).workspace)
    with temporary_prefect_server():
        result = flywheel_demo(config=str(config) if config else None, workspace=str(workspace) if workspace else None,
                               auto_approve=auto_approve, weeks_after=weeks_after, bad_canary=bad_canary)
    width = max(len(name) for name, _, _ in before_after_rows(result))
    lines = [f"{'':{width}}  {'before':>24}  {'after':>24}"]
    lines += [f"{name:{width}}  {before:>24}  {after:>24}" for name, before, after in before_after_rows(result)]
    lines += ["", table([("new products launched", result["launch_week"]), ("drift detected", result["drift_detected_week"]),
                         ("cycle", result["cycle_id"]), ("canary", result["canary_version"]),
                         ("gate", "passed" if result["gate_passed"] else "failed"),
                         ("ramp", ", ".join(f"{s['share']:g}: {s['decision']}" for s in result["ramp_steps"]) or "-"),
                         ("week 1 refusal diff", "-" if result["ab_refusal_diff"] is None else
                          f"{result['ab_refusal_diff'] * 100:+.1f} pts {[round(x * 100, 1) for x in result['ab_refusal_ci'] or []]}"),
                         ("promoted", result["promoted"]),
                         ("evaluation report", result["report"]), ("seconds", result["seconds"])])]
    emit(result, as_json, "\n".join(lines))
    if not result["gate_passed"]:
        raise check_failed("the canary failed its evaluation gate (see the evaluation report)")


# ------------------------------------------------------------------------------------------- A/B


@app.command("ab")
def ab(
    sources: SourcesArg = None,
    expected_share: Annotated[float, typer.Option("--expected-share", min=0.0, max=1.0, help="The canary share the split ran at during the window (e.g. 0.05), for the sample-ratio check and the interval tuning.")] = ...,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A/B analysis of champion vs canary traffic (records carry metadata.variant): per arm requests,
    users, refusal, re-ask, thumbs-down, error and unsupported-answer rates, feedback coverage and
    latency p95; each difference canary - champion with an always-valid interval (users as the unit),
    the guardrail margins of abtest.margins, and a sample-ratio-mismatch check. Decision: advance,
    hold or halt; exits 1 on halt."""
    from tasks.abtest import analyse_ab
    from tasks.logs import load_window
    from tasks.report import ab_markdown

    settings = settings_for(config, workspace)
    result = analyse_ab(load_window(settings, sources, since, until).table, settings, expected_share)
    result.update(since=since, until=until)
    emit(result, as_json, ab_markdown(result))
    if result["decision"] == "halt":
        raise check_failed("; ".join(r for r in result["reasons"] if "sample-ratio" in r or "beyond its margin" in r))


@app.command("ramp")
def ramp(
    version: Annotated[Optional[str], typer.Argument(help="The approved canary to ramp [default: the canary alias].")] = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ramp an approved canary on live traffic in the foreground (what the canary-ramp deployment runs when
    an approval's event starts it): the model server at serving.url routes ramp.steps of the users to it,
    one step after another; every ramp.look_every_hours the A/B analysis of the step's logs decides:
    advance, hold, or halt (share 0, canary rejected with the evidence). Every step below 1.0 advanced:
    promoted. A step without a decision after ramp.max_step_hours stops as inconclusive. Exits 1 unless
    promoted."""
    from flows.ramp import RampError, canary_ramp
    from flows.temporary_server import temporary_prefect_server

    if not settings_for(config, workspace).serving.url:  # before a Prefect server is started for nothing
        print("error: the ramp splits traffic on the model server at serving.url, which is not set: set serving.url "
              "(e.g. http://127.0.0.1:8000) to the `flywheel serve` that answers production traffic", file=sys.stderr)
        raise typer.Exit(2)
    try:
        with temporary_prefect_server():
            result = canary_ramp(version=version, config=str(config) if config else None,
                                 workspace=str(workspace) if workspace else None)
    except RampError as err:
        raise check_failed(str(err)) from None
    emit(result, as_json, table([("version", result["version"]), ("outcome", result["outcome"]),
                                 ("steps", ", ".join(f"{s['share']:g}: {s['decision']}" for s in result["steps"])),
                                 ("reason", result["reason"] or "-")]))
    if not result["promoted"]:
        raise check_failed(result["reason"] or "the canary was not promoted")


# ----------------------------------------------------------------------------------------- cost


@app.command()
def cost(
    logs: Annotated[Optional[list[str]], typer.Option("--logs", help="Measure the token volume from these logs.")] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    workspace: WorkspaceOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Monthly cost of self-hosting vs an API alternative, yearly savings and 1-year ROI. Token
    volume: measured from --logs (or the workspace logs), else cost.tokens_per_month."""
    from tasks.cost import cost_from_logs
    from tasks.report import cost_markdown

    report = cost_from_logs(settings_for(config, workspace), sources=logs or None, since=since, until=until)
    emit(report, as_json, cost_markdown(report))


def main() -> None:
    """Entry point. Typer handles usage errors itself (exit 2); known error kinds become one clear
    line on stderr instead of a traceback (FLYWHEEL_DEBUG=1 shows the traceback)."""
    from tasks.base_model import ModelError  # light: torch is imported inside its functions

    try:
        app()
    except (ConfigError, ValueError, FileNotFoundError, ModelError) as err:
        if os.environ.get("FLYWHEEL_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
