"""Canary review: show the reviewer what the canary is and what its evaluation said, wait for a
decision in the Prefect UI, record it, and on approval start the canary ramp (DESIGN.md sections 5, 15):
the approval emits flywheel.canary.approved, the canary-ramp deployment's trigger, and the ramp
(flows/ramp.py) promotes the canary once it holds on live traffic.

In a deployment run the flow suspends (`suspend_flow_run`, no process kept alive) until someone
answers the ReviewDecision form; on resume Prefect restarts the run from the top, so everything
before the suspend is cheap and repeatable (registry reads and an artifact). The form refuses blank
text itself (Prefect's server checks an answer against the form's schema before it resumes the run); an
answer the registry refuses (e.g. an approval by the reviewer who overrode the version's failed gate)
asks again under a new pause key. Outside a deployment (CLI, demo, tests) there is nothing to suspend:
the flow publishes the same summary and returns the `flywheel approve|reject` commands that complete
the review. The rules (who may promote what) live in tasks/registry.py; this flow only orchestrates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from prefect.settings import get_current_settings
from pydantic import Field

from flows.ramp import APPROVED_EVENT, request_ramp
from flows.parameters import ConfigFile, OptionalText, WorkspaceDir
from serving.notify import tell_server
from tasks import cycle
from tasks.config import Settings, load_settings
from tasks.report import review_markdown, review_summary_markdown
from tasks.registry import Registry, RegistryInputError, RegistryRuleError

DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
MAX_ATTEMPTS = 3  # an answer the registry refuses asks again, this many times in all
NOT_BLANK = r".*\S.*"  # JSON-schema patterns match anywhere: some character that is not whitespace


class ReviewDecision(RunInput):
    """The reviewer's answer. No defaults: the form must be filled in, and blank text is refused by the
    form itself (the schema Prefect validates a Resume against)."""

    decision: Literal["approve", "reject"] = Field(description="approve: ramp the canary on live traffic (promoted "
                                                                   "once it holds); reject: drop it")
    reviewer: str = Field(min_length=1, pattern=NOT_BLANK, description="Who decides (recorded on the model version)")
    comment: str = Field(min_length=1, pattern=NOT_BLANK, description="Why (recorded on the model version)")


def mlflow_version_url(name: str, version: str, base: str | None = None) -> str:
    base = (base or os.environ.get("MLFLOW_UI_URL") or DEFAULT_MLFLOW_UI).rstrip("/")
    return f"{base}/#/models/{name}/versions/{version}"


def review_commands(version: str) -> dict[str, str]:
    return {
        "approve": f"flywheel approve {version} --reviewer NAME --comment TEXT",
        "reject": f"flywheel reject {version} --reviewer NAME --comment TEXT",
        "ramp": f"flywheel ramp {version}",  # what a Resume with "approve" starts by itself (with a Prefect server)
    }


def review_key(version: str, attempt: int) -> str:
    """The pause key of the `attempt`-th question for `version`. Prefect takes lowercase letters, digits
    and dashes only (its input keys are derived from it)."""
    return f"review-{version}" if attempt == 1 else f"review-{version}-attempt-{attempt}"


@task(name="describe-canary", cache_policy=NO_CACHE)
def describe_canary(settings: Settings, version: str | None) -> dict[str, Any]:
    """The version under review (default: the `canary` alias) with its tags, gate and eval report."""
    registry = Registry(settings)
    status = registry.status()
    version = str(version).lstrip("v") if version else status["canary"]
    if not version:
        raise RegistryRuleError(f"{registry.name} has no canary to review: register one (flywheel retrain) or pass "
                                "the version to review")
    entry = next((v for v in status["versions"] if v["version"] == version), None)
    if entry is None:
        raise RegistryInputError(f"{registry.name} has no version {version!r}; see `flywheel registry status`")
    tags = registry.client.get_model_version(registry.name, version).tags or {}
    cycle_dir = settings.paths.under("cycles", entry["cycle_id"]) if entry["cycle_id"] else None
    report = cycle_dir / cycle.EVAL / "report.md" if cycle_dir else None
    ramp = cycle_dir / cycle.RAMP if cycle_dir else None
    return {
        "model": registry.name,
        "version": version,
        "champion": status["champion"],
        "canary": status["canary"],
        "cycle_id": entry["cycle_id"],
        "gate": entry["gate"],
        "gate_override": entry["gate_override"],
        "gate_report": tags.get("gate_report"),
        "eval_summary": tags.get("eval_summary"),
        "review": entry["review"],
        "eval_report": str(report) if report is not None and report.is_file() else None,
        "evaluation": _read_json(cycle_dir / cycle.EVAL / "report.json") if cycle_dir else None,
        "cost": _read_json(cycle_dir / cycle.COST) if cycle_dir else None,
        "ab": _last_look(_read_json(ramp / "ramp.json")) if ramp else None,  # the live A/B of an earlier ramp
        "ramp_report": str(ramp / "report.md") if ramp and (ramp / "report.md").is_file() else None,
        "mlflow_url": mlflow_version_url(registry.name, version),
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _last_look(ramp: dict[str, Any] | None) -> dict[str, Any] | None:
    """The A/B result of a ramp's latest look (e.g. one that stopped inconclusive: the reviewer decides again)."""
    looks = (ramp or {}).get("looks") or []
    return looks[-1]["result"] if looks else None


@task(name="publish-review-summary", cache_policy=NO_CACHE)
def publish_review_summary(settings: Settings, canary: dict[str, Any]) -> str:
    """Publish the canary-review artifact (summary, then the full report) and return the summary the
    Resume dialog shows, which links to that artifact instead of repeating the report before the form."""
    version = canary["version"]
    headlines = {suite: next(iter(metrics), "") for suite, metrics in settings.evaluate.gates.items()}
    # The full evaluation report, then the live evidence of an earlier ramp (one that stopped inconclusive).
    parts = [Path(path).read_text(encoding="utf-8") for path in (canary["eval_report"], canary["ramp_report"]) if path]
    report = "\n\n".join(parts) or None

    def summary(link: str | None) -> str:
        return review_summary_markdown(canary, canary["evaluation"], headlines=headlines, ab=canary["ab"],
                                       cost=canary["cost"], report_link=link)

    artifact = review_markdown(summary(None), review_commands(version), report, canary["eval_report"])
    artifact_id = create_markdown_artifact(key="canary-review", markdown=artifact,
                                           description=f"Canary v{version}: evidence for the reviewer")
    return summary(artifact_url(artifact_id))


def artifact_url(artifact_id: Any) -> str | None:
    """The artifact's page in the UI the server opens by default (V2 lives under /v2); None without a UI."""
    current = get_current_settings()
    if not current.ui_url or not artifact_id:
        return None
    return f"{current.ui_url.rstrip('/')}{'/v2' if current.server.ui.v2_enabled else ''}/artifacts/artifact/{artifact_id}"


@task(name="record-review", cache_policy=NO_CACHE)
def record_review(settings: Settings, version: str, decision: str, reviewer: str, comment: str) -> dict[str, Any]:
    return Registry(settings).review(version, decision=decision, reviewer=reviewer, comment=comment)


def _in_deployment() -> bool:
    from prefect.runtime import deployment

    return bool(deployment.id)


def _version_awaited_before() -> str | None:
    """The version a resumed run was suspended for. On resume the run restarts from the top; if the
    canary alias moved meanwhile, the answer still belongs to the version that was shown."""
    from prefect import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
    keys = sorted(k for k in (run.empirical_policy.pause_keys or set()) if k.startswith("review-"))
    return keys[0].removeprefix("review-").split("-")[0] if keys else None


def await_recorded_review(settings: Settings, version: str, description: str, timeout_s: int) -> dict[str, Any]:
    """Suspend until the reviewer answers, then record the answer. One the registry refuses asks again
    under a new pause key, so a restarted run replays the earlier answers (and their refusals) in order."""
    from prefect.flow_runs import suspend_flow_run

    logger = get_run_logger()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        form = ReviewDecision.with_initial_data(description=description)
        answer = suspend_flow_run(wait_for_input=form, key=review_key(version, attempt), timeout=timeout_s)
        try:
            return record_review(settings, version, answer.decision, answer.reviewer, answer.comment)
        except (RegistryRuleError, RegistryInputError) as refused:
            logger.warning("review answer %d for v%s refused: %s; asking again", attempt, version, refused)
            description = f"**Previous answer refused: {refused}**\n\n" + description
    raise RegistryRuleError(f"no review answer for v{version} could be recorded after {MAX_ATTEMPTS} attempts; "
                            f"use `flywheel approve|reject {version} --reviewer NAME --comment TEXT`")


@flow(name="canary-review", log_prints=True)
def canary_review(
    version: OptionalText = "",
    config: ConfigFile = "",
    workspace: WorkspaceDir = "",
) -> dict[str, Any]:
    """Show the canary's evidence, wait for a reviewer's decision, record it, start the ramp on approval.

    Args:
        version: model version to review. Empty: the registry's `canary` alias.
        config: YAML config file laid over the embedded defaults (empty: $FLYWHEEL_CONFIG, else the defaults).
        workspace: folder holding the MLflow store and cycle outputs (empty: the config's, default ./workspace).
    """
    settings = load_settings(config, {"paths.workspace": workspace} if workspace else None)
    deployed = _in_deployment()
    if deployed and not version:
        version = _version_awaited_before()
    canary = describe_canary(settings, version)
    version = canary["version"]
    markdown = publish_review_summary(settings, canary)

    if not deployed:
        commands = review_commands(version)
        print(f"canary v{version} awaits review: {commands['approve']}, then {commands['ramp']} (champion once it holds on live traffic)")
        return {"version": version, "status": "awaiting review", **review_commands(version),
                "gate": canary["gate"], "champion": canary["champion"], "mlflow_url": canary["mlflow_url"]}

    review = await_recorded_review(settings, version, markdown, int(settings.review.timeout_days * 86400))
    result: dict[str, Any] = {"version": version, "decision": review["decision"], "reviewer": review["reviewer"],
                              "ramp_requested": False}
    if review["decision"] == "approve":  # approval means "ramp it": flows/ramp.py promotes once the canary holds
        result["ramp_requested"] = request_ramp(settings, version, review["reviewer"])
    result["server"] = tell_server(settings)
    print(f"v{version}: {review['decision']} by {review['reviewer']}"
          + (f" -> canary ramp requested ({APPROVED_EVENT})" if result["ramp_requested"] else ""))
    return result
