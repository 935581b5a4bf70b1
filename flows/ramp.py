"""The canary ramp (DESIGN.md section 15): an approved canary earns its promotion on live traffic.

    approval (flywheel approve / the review form) -> event flywheel.canary.approved -> this flow
    for each share in ramp.steps below 1.0:
        POST the share to the model server (serving.url, /admin/canary-share)
        every ramp.look_every_hours: A/B analysis of the server's logs since the step began
            advance (and the step is ramp.min_step_hours old)     -> next step
            halt (a guardrail breached, or sample-ratio mismatch)  -> share 0, reject with the evidence,
                                                                      event flywheel.canary.halted
            no decision after ramp.max_step_hours                  -> share 0, event flywheel.canary.halted
                                                                      (inconclusive: not rejected, not promoted;
                                                                      a reviewer approves again or rejects)
    every step below 1.0 advanced -> promote the canary to champion (a share of 1.0 has no champion arm
    to compare with, so reaching it is the promotion)

Each step is its own sequential test: the analysis reads only records logged since the step's share was
set (by the records' timestamps), at that step's expected share. Every look is a Prefect artifact
(`canary-ramp`: the A/B table and the decision), and the ramp's record (steps, looks, outcome) is kept in
the canary's cycle folder (`07_ramp/`) where the review flow and the cycle report show it.

Time comes from a clock: `WallClock` (the deployment) sleeps between looks; tests and the demo pass a
`SimulatedClock` whose `wait(hours)` sends that many simulated hours of traffic through the real server
and moves simulated time on, so a week-long step takes seconds.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from serving.notify import set_canary_share, tell_server
from flows.parameters import ConfigFile, OptionalText, WorkspaceDir
from tasks import cycle
from tasks.abtest import analyse_ab
from tasks.config import Settings, load_settings
from tasks.files import atomic_write_text
from tasks.registry import Registry, RegistryRuleError
from tasks.report import ramp_markdown

APPROVED_EVENT = "flywheel.canary.approved"  # starts the canary-ramp deployment (prefect.yaml trigger)
HALTED_EVENT = "flywheel.canary.halted"
RAMP_REVIEWER = "canary-ramp"  # who the registry records for the ramp's own rejections


class RampError(RuntimeError):
    """The ramp cannot start or go on (no server to split traffic, no approved canary, ...)."""


class WallClock:
    """Real time: looks `hours` apart."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def wait(self, hours: float) -> None:
        time.sleep(hours * 3600)


class SimulatedClock:
    """Simulated time for tests and the demo: `wait(hours)` calls `traffic(hours)` (which sends that many
    simulated hours of requests through the server and returns once they are logged) and moves on."""

    def __init__(self, traffic: Callable[[float], Any] | None = None, start: datetime | None = None) -> None:
        self.traffic = traffic
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self._now

    def wait(self, hours: float) -> None:
        if self.traffic is not None:
            self.traffic(hours)
        self._now += timedelta(hours=hours)


def request_ramp(settings: Settings, version: str, reviewer: str) -> bool:
    """Emit the event the canary-ramp deployment's trigger starts on. Only with a Prefect server
    (PREFECT_API_URL; without one Prefect would start a temporary server that no deployment listens to);
    returns whether an event went out."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return False
    event = emit_event(event=APPROVED_EVENT, resource=_resource(settings, version),
                       payload={"version": str(version), "reviewer": reviewer})
    return event is not None


def _resource(settings: Settings, version: str) -> dict[str, str]:
    return {"prefect.resource.id": f"flywheel.registry.{settings.registry.model_name}.v{str(version).lstrip('v')}"}


@task(name="check-approved-canary", cache_policy=NO_CACHE)
def approved_canary(settings: Settings, version: str | None) -> dict[str, Any]:
    """The canary to ramp: the `canary` alias, approved as its latest review."""
    registry = Registry(settings)
    status = registry.status()
    canary = status["canary"]
    version = str(version).lstrip("v") if version else canary
    if not version or version != canary:
        raise RampError(f"{registry.name}: v{version} is not the canary (the canary alias names {canary or 'nothing'}); "
                        "only the canary can be ramped")
    entry = next(v for v in status["versions"] if v["version"] == version)
    if not entry["review"] or entry["review"]["decision"] != "approve":
        raise RampError(f"v{version} is not approved: flywheel approve {version} --reviewer NAME --comment TEXT")
    if entry["gate"] != "passed" and not entry["gate_override"]:  # it could never be promoted: do not expose users
        raise RampError(f"v{version} failed its evaluation gate and has no override: "
                        f"flywheel registry override {version} --reviewer NAME --reason TEXT first")
    return {"version": version, "champion": status["champion"], "cycle_id": entry["cycle_id"]}


@task(name="set-canary-share", cache_policy=NO_CACHE)
def set_share(settings: Settings, share: float, version: str | None) -> dict[str, Any]:
    return set_canary_share(settings, share, version)


@task(name="ab-look", cache_policy=NO_CACHE)
def look(settings: Settings, since: datetime, share: float) -> dict[str, Any]:
    """The A/B analysis of what the server logged since `since` (the step's start), split at `share`."""
    from tasks.logs import load_window

    sources = [str(settings.serving.log_dir)] if settings.serving.log_dir else None
    loaded = load_window(settings, sources, since=since)
    result = analyse_ab(loaded.table, settings, share)
    result["quarantined_records"] = loaded.quarantined
    return result


def step_decision(result: dict[str, Any], hours: float, settings: Settings) -> tuple[str, str | None]:
    """The ramp's decision at one look: the analysis's, except that an advance waits for the step's
    minimum duration and a step past its maximum without a decision halts as inconclusive."""
    ramp = settings.ramp
    decision = result["decision"]
    if decision == "advance" and hours < ramp.min_step_hours:
        return "hold", f"the step is {hours:g} h old; it lasts at least {ramp.min_step_hours:g} h (ramp.min_step_hours)"
    if decision == "hold" and hours >= ramp.max_step_hours:
        return "inconclusive", (f"no decision after {hours:g} h (ramp.max_step_hours {ramp.max_step_hours:g}): the "
                                "canary's traffic stops; approve it again to ramp again, or reject it")
    return decision, None


@task(name="publish-ramp-look", cache_policy=NO_CACHE)
def publish(settings: Settings, record: dict[str, Any]) -> None:
    markdown = ramp_markdown(record)
    create_markdown_artifact(key="canary-ramp", markdown=markdown,
                             description=f"Canary v{record['version']} ramp: look {len(record['looks'])}")
    if record.get("cycle_id"):
        folder = settings.paths.under("cycles", record["cycle_id"], cycle.RAMP)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "ramp.json", json.dumps(record, indent=1, default=str) + "\n")
        atomic_write_text(folder / "report.md", markdown + "\n")


def evidence(result: dict[str, Any], share: float) -> str:
    """One line for the registry's rejection comment: why, and the guardrails' figures."""
    rows = "; ".join(f"{row['metric']} {row['champion'] if row['champion'] is None else round(row['champion'], 4)} -> "
                     f"{row['canary'] if row['canary'] is None else round(row['canary'], 4)}"
                     + (f" diff interval [{row['ci'][0]:.4f}, {row['ci'][1]:.4f}] margin {row['margin']:g}" if row["ci"] else "")
                     for row in result["metrics"] if row["guardrail"])
    users = f"{result['variants']['canary']['users']} canary / {result['variants']['champion']['users']} champion users"
    return f"canary ramp halted at share {share:g} ({users}): {' | '.join(result['reasons'][:2])}. Guardrails: {rows}"


@flow(name="canary-ramp", log_prints=True)
def canary_ramp(
    version: OptionalText = "",
    config: ConfigFile = "",
    workspace: WorkspaceDir = "",
    server_url: OptionalText = "",
    clock: Any = None,
) -> dict[str, Any]:
    """Ramp an approved canary through ramp.steps on live traffic; promote it, or halt it.

    Args:
        version: the canary version to ramp. Empty: the registry's `canary` alias.
        config: YAML config file laid over the embedded defaults.
        workspace: folder holding the MLflow store, the server's logs and cycle outputs (default ./workspace).
        server_url: the model server whose traffic is split (default: serving.url).
        clock: leave empty in the UI (real time between looks); tests and the demo pass a SimulatedClock.
    """
    overrides = {"paths.workspace": workspace, "serving.url": server_url}
    settings = load_settings(config, {k: v for k, v in overrides.items() if v} or None)
    if not settings.serving.url:
        raise RampError("the ramp splits traffic on the model server at serving.url, which is not set: set serving.url "
                        "(e.g. http://127.0.0.1:8000) to the `flywheel serve` that answers production traffic")
    clock = clock or WallClock()
    logger = get_run_logger()
    canary = approved_canary(settings, version)
    version = canary["version"]
    record: dict[str, Any] = {"version": version, "champion": canary["champion"], "cycle_id": canary["cycle_id"],
                              "steps": settings.ramp.steps, "looks": [], "outcome": "running"}
    for index, share in enumerate(s for s in settings.ramp.steps if s < 1.0):
        set_share(settings, share, version)
        since, began = datetime.now(timezone.utc), clock.now()  # records' time; the ramp's time
        print(f"v{version}: step {index + 1}, canary share {share:g}")
        while True:
            clock.wait(settings.ramp.look_every_hours)
            hours = round((clock.now() - began).total_seconds() / 3600, 3)
            result = look(settings, since, share)
            decision, why = step_decision(result, hours, settings)
            record["looks"].append({"step": index + 1, "share": share, "hours": hours, "decision": decision,
                                    "why": why, "result": result})
            publish(settings, record)
            users = (result["variants"]["canary"]["users"], result["variants"]["champion"]["users"])
            print(f"v{version} share {share:g} after {hours:g} h: {decision} ({users[0]} canary, {users[1]} champion users)")
            if decision == "advance":
                break
            if decision in ("halt", "inconclusive"):
                return _halt(settings, record, result, share, decision, why, logger)
    registry = Registry(settings)
    moved = registry.promote(version)
    record.update(outcome="promoted", promoted={"from": moved["from"], "to": moved["to"]})
    tell_server(settings)
    set_share(settings, 0.0, None)  # the canary alias is gone (it is the champion now): clear the stored share
    publish(settings, record)
    print(f"v{version} promoted to champion after {len(record['looks'])} looks")
    return _summary(record)


def _halt(settings: Settings, record: dict[str, Any], result: dict[str, Any], share: float, decision: str,
          why: str | None, logger) -> dict[str, Any]:
    from prefect.events import emit_event

    version = record["version"]
    set_share(settings, 0.0, version)
    reason = evidence(result, share) if decision == "halt" else f"canary ramp stopped at share {share:g}: {why}"
    if decision == "halt":
        try:
            Registry(settings).review(version, decision="reject", reviewer=RAMP_REVIEWER, comment=reason)
        except RegistryRuleError as err:  # e.g. someone promoted it meanwhile: report, the share is 0 already
            logger.error("halted, but v%s could not be rejected: %s", version, err)
            reason += f" (not rejected: {err})"
        tell_server(settings)
    record.update(outcome="halted" if decision == "halt" else "inconclusive", reason=reason)
    publish(settings, record)
    emit_event(event=HALTED_EVENT, resource=_resource(settings, version),
               payload={"version": version, "share": share, "decision": decision, "reason": reason})
    logger.warning("v%s: %s", version, reason)
    return _summary(record)


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    last = record["looks"][-1] if record["looks"] else None
    return {"version": record["version"], "outcome": record["outcome"], "reason": record.get("reason"),
            "promoted": record["outcome"] == "promoted",
            "steps": [_step(record, share) for share in dict.fromkeys(lk["share"] for lk in record["looks"])],
            "last_look": last and {k: last[k] for k in ("share", "hours", "decision")},
            "ab": last and last["result"]}


def _step(record: dict[str, Any], share: float) -> dict[str, Any]:
    """One step of the ramp: its share, looks, hours, final decision and last A/B result."""
    looks = [lk for lk in record["looks"] if lk["share"] == share]
    return {"share": share, "looks": len(looks), "hours": looks[-1]["hours"], "decision": looks[-1]["decision"],
            "ab": looks[-1]["result"]}
