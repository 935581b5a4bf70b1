"""`flywheel demo`: the whole loop on a simulated quarter, on a laptop with no GPU, servers or network.

    bootstrap the base model (cached) -> weeks 1..13: simulated users ask, the real champion answers
        (knowledge base v2's products launch in week 7), weekly monitoring runs on each week
    -> the quarterly retraining cycle on the quarter's logs -> canary registered, evaluated, gated
    -> approved (--auto-approve) -> the canary ramp through a real `flywheel serve` process on a free
        loopback port: week 1 at the first (small) canary share with its A/B table, then the ramp to
        100% and promotion (flows/ramp.py, in simulated time: each simulated day of users is sent through
        the server in seconds) -> two more weeks answered by the new champion -> a before/after table

`--bad-canary` registers a deliberately broken adapter (trained to refuse everything) as the canary
instead: the ramp halts it at the first step, rejects it, and the champion is untouched.

The simulator only plays the users: it draws the questions and decides how a user reacts to each
answer (from its ground truth); every answer comes from the champion model through the Generator.
Each run starts from a clean quarter in its workspace; the built base model and the PII key are kept.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.live import LiveServer, SimulatedUsers, train_refusing_adapter
from flows.monitoring import weekly_monitoring
from flows.ramp import SimulatedClock, canary_ramp
from flows.retraining import quarterly_retraining
from tasks import monitor
from tasks.config import SHIPPED_CONFIGS, Settings, load_settings
from tasks.report import ab_markdown, demo_markdown

DEMO_CONFIG = SHIPPED_CONFIGS / "demo.yaml"
MARKER = ".flywheel-demo"  # marks a workspace the demo may clear
# Live users per simulated day during the ramp: enough for the A/B to decide at the demo config's
# ramp.min_users_per_arm and its margins within the first step's week, few enough for a 2-core laptop.
USERS_PER_DAY = 80


class DemoError(ValueError):
    """The demo cannot start; the message says why and what to do."""


class _Clock:
    """Progress lines on stderr with the seconds since the demo started (stdout is for --json)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def say(self, message: str) -> None:
        print(f"[{self.seconds:5.0f}s] {message}", file=sys.stderr, flush=True)


def demo_settings(config: str | None, workspace: str | None) -> Settings:
    return load_settings(config or str(DEMO_CONFIG), {"paths.workspace": workspace} if workspace else None)


def check_workspace(workspace: Path) -> None:
    """The demo clears its workspace on every run: refuse a folder holding anything it did not write."""
    from flows.local_stack import stack_is_running

    workspace = Path(workspace)
    if workspace.is_dir() and any(workspace.iterdir()) and not (workspace / MARKER).is_file():
        raise DemoError(f"{workspace} holds files no demo wrote, and the demo clears its workspace on every run: "
                        "pass an empty or new folder with --workspace")
    if stack_is_running(workspace):
        raise DemoError(f"a local stack (flywheel stack up) is running on {workspace}, and the demo would clear the "
                        "MLflow store under it: stop it first with flywheel stack down (same --config/--workspace)")


def reset_workspace(workspace: Path) -> None:
    """Clear what an earlier demo left in `workspace` (logs, monitoring, cycles, the MLflow store),
    keeping the built base model and the PII key. A folder the demo did not make is never touched."""
    from tasks.pii import KEY_FILE

    workspace = Path(workspace)
    check_workspace(workspace)
    keep = {"models", KEY_FILE, MARKER, ".prefect", "stack-logs"}  # the stack's server history survives too
    for child in workspace.iterdir() if workspace.is_dir() else ():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / MARKER).write_text("This folder belongs to `flywheel demo`, which clears it on every run.\n",
                                    encoding="utf-8")


@task(name="simulate-week", cache_policy=NO_CACHE)
def simulate_traffic(settings: Settings, week: int, champion: Any) -> dict:
    """One week of simulated users, answered by `champion`, appended to the workspace's logs."""
    from tasks.simulate import simulate

    result = simulate(settings.simulate, settings.workspace, data_dir=settings.paths.data_dir, model=champion,
                      weeks=[week], append=week > 1)
    return {"records": result.records, "counts": result.counts, "model_version": result.model_version,
            "ground_truth": result.ground_truth, "seconds": result.seconds}


@flow(name="flywheel-demo")
def flywheel_demo(
    config: str | None = None,
    workspace: str | None = None,
    auto_approve: bool = False,
    weeks_after: int = 2,
    bad_canary: bool = False,
) -> dict[str, Any]:
    """A simulated quarter through the whole loop; returns the before/after figures.

    Args:
        config: YAML config laid over the embedded defaults (default: configs/demo.yaml).
        workspace: folder for the demo's output (default: the config's, workspace/demo); cleared on each run.
        auto_approve: approve the canary when its gate passes and ramp it on live traffic (promoted if it
            holds); otherwise stop at "awaiting review".
        weeks_after: weeks simulated with the new champion after the promotion.
        bad_canary: register an adapter trained to refuse everything as the canary instead (approved and
            ramped, to show the ramp halting it); implies auto_approve.
    """
    from tasks.base_model import base_model_for
    from tasks.generation import GreedyAnswerCache
    from tasks.served import served_generator
    from tasks.simulate import World, outcome_summary

    clock = _Clock()
    config = config or str(DEMO_CONFIG)
    settings = demo_settings(config, workspace)
    if weeks_after < 1:
        raise DemoError(f"weeks_after must be at least 1, got {weeks_after}")
    sim = settings.simulate
    if not 1 < sim.launch_week <= sim.weeks:
        raise DemoError(f"simulate.launch_week ({sim.launch_week}) must fall inside the quarter (weeks 2..{sim.weeks}) "
                        "for the demo to show a launch")
    reset_workspace(settings.workspace)
    run_args = {"config": config, "workspace": str(settings.workspace)}

    clock.say("base model: building the embedded one (once; cached afterwards) ..."
              if not settings.model.base else f"base model: {settings.model.base}")
    base = base_model_for(settings, progress=clock.say)
    champion = GreedyAnswerCache(served_generator(settings).champion())  # the bare base until a canary is promoted
    world = World.create(sim, settings.paths.data_dir)
    label = {week: monitor.week_label(world.week_start(week)) for week in range(1, sim.weeks + weeks_after + 1)}
    clock.say(f"simulating {sim.weeks} weeks of {sim.records_per_week} requests from {sim.start}; new products launch "
              f"in week {sim.launch_week} ({label[sim.launch_week]}); the champion answering is the base model {base}")

    weeks: dict[int, dict] = {}

    def run_week(week: int) -> None:
        traffic = simulate_traffic(settings, week, champion)
        checked = weekly_monitoring(week=label[week], **run_args)
        weeks[week] = {"label": label[week], "traffic": traffic, "monitoring": checked}
        signals, drift, decision = checked["signals"], checked["drift"], checked["decision"]
        if decision["triggered"]:
            verdict = "RETRAINING TRIGGERED"
        elif decision.get("suppressed_by_cooldown"):
            verdict = "retraining already requested (cool-down)"
        else:
            verdict = "no action"
        kl = f"KL {drift['kl']:.3f} ({drift['band']})" if drift.get("kl") is not None else f"drift {drift.get('band')}"
        unsupported = (signals.get("unsupported") or {}).get("unsupported_rate")
        made_up = f", unsupported {unsupported:.1%}" if unsupported is not None else ""
        clock.say(f"week {week:2d} {label[week]}  {traffic['records']} requests by {traffic['model_version']}: "
                  f"refusals {signals['refusal_rate']:.1%}, re-asks {signals['reask_rate']:.1%}{made_up}, {kl}: {verdict}")

    for week in range(1, sim.weeks + 1):
        run_week(week)
    triggered = [w for w in weeks if weeks[w]["monitoring"]["triggered"]]
    drifted = [w for w in weeks if weeks[w]["monitoring"]["drift"].get("alert")]

    since, until = world.week_start(1), world.week_start(sim.weeks + 1)
    window = f"{since.date()}..{until.date()}"
    clock.say(f"quarterly retraining on {window}: extract, mask PII, annotate, agreement, dataset, LoRA training, "
              "evaluation, canary ...")
    cycle = quarterly_retraining(window=window, **run_args)
    canary = cycle.get("canary_version")
    clock.say(f"cycle {cycle['cycle_id']}: " + (
        f"stopped ({cycle['stopped']})" if cycle.get("stopped") else
        f"{cycle['cases']} cases, {cycle['masked']} masked, alpha {cycle['agreement']['alpha']:.3f} "
        f"({cycle['agreement']['decision']}), {cycle['train']['examples']} training examples, "
        f"{cycle['train']['steps']} steps; canary v{canary}, gate {cycle['gate']}"))

    ramp = None
    if (auto_approve or bad_canary) and canary and cycle["passed"]:
        if bad_canary:
            canary = register_bad_canary(settings, base, cycle, clock)
        ramp = ramp_live(settings, config, canary, world.week_start(sim.weeks + 1), clock)
    promoted = bool(ramp and ramp["promoted"])
    before_weeks = list(range(sim.weeks - weeks_after + 1, sim.weeks + 1))
    after_weeks = list(range(sim.weeks + 1, sim.weeks + weeks_after + 1))
    if promoted:
        clock.say(f"v{canary} promoted to champion by the ramp; {weeks_after} more weeks with it")
        champion = GreedyAnswerCache(served_generator(settings).champion())  # now the promoted canary
        # From now on drift is measured against the traffic the new champion learned from.
        first_drift = min(drifted or [sim.launch_week])
        monitor.reference_from_logs(settings, champion.model_version, world.week_start(first_drift), until)
        for week in after_weeks:
            run_week(week)
    elif ramp is not None:
        clock.say(f"v{canary} not promoted: {ramp['reason']}; the champion is unchanged")
    elif canary and cycle["passed"]:
        clock.say(f"v{canary} awaits review: flywheel approve {canary} --reviewer NAME --comment TEXT "
                  f"--workspace {settings.workspace}  (or rerun the demo with --auto-approve)")
    else:
        clock.say("no canary to promote: " + (cycle.get("stopped") or "its evaluation gate failed (see 06_eval/report.md)"))

    truth = Path(weeks[1]["traffic"]["ground_truth"])  # one file, every week appended to it
    before = _period(weeks, before_weeks, outcome_summary(truth, before_weeks))
    after = _period(weeks, after_weeks, outcome_summary(truth, after_weeks)) if promoted else None
    result = {
        "workspace": str(settings.workspace),
        "launch_week": label[sim.launch_week],
        "drift_detected_week": label[min(drifted)] if drifted else None,
        "retraining_triggered_week": label[min(triggered)] if triggered else None,
        "cycle_id": cycle["cycle_id"],
        "canary_version": canary,
        "gate_passed": bool(cycle["passed"]),
        "promoted": promoted,
        "refusal_rate_before": before["refusal_rate"],
        "refusal_rate_after": after and after["refusal_rate"],
        "new_topic_accuracy_before": before["new_topic_accuracy"],
        "new_topic_accuracy_after": after and after["new_topic_accuracy"],
        "wrong_answer_rate_before": before["wrong_answer_rate"],
        "wrong_answer_rate_after": after and after["wrong_answer_rate"],
        "unsupported_rate_before": before["unsupported_rate"],
        "unsupported_rate_after": after and after["unsupported_rate"],
        "before": before,
        "after": after,
        "weeks": [_week_row(weeks[w]) for w in sorted(weeks)],
        "report": str(Path(cycle["cycle_dir"]) / "06_eval" / "report.md") if cycle.get("cycle_dir") else None,
        **_ramp_fields(ramp),
        "seconds": round(clock.seconds, 1),
    }
    create_markdown_artifact(key="demo-summary", markdown=demo_markdown(result),
                             description="flywheel demo: before and after the retraining cycle")
    return result


def register_bad_canary(settings: Settings, base: Path, cycle: dict, clock: _Clock) -> str:
    """--bad-canary: an adapter trained to refuse everything, registered as the canary in place of the
    cycle's. It carries the cycle's passed gate on purpose: the point is a canary whose offline evaluation
    missed the fault, so that only live traffic can stop it."""
    from tasks.base_model import model_digest
    from tasks.registry import Registry

    clock.say("--bad-canary: training an adapter that refuses everything ...")
    adapter = train_refusing_adapter(settings, base, settings.paths.under("bad-canary", "adapter"))
    version = Registry(settings).register_canary(
        adapter, cycle_id=cycle["cycle_id"], base_path=base, base_digest=model_digest(base), dataset_sha256="0" * 64,
        eval_report={"gate": {"passed": True, "first_cycle": True, "checks": [], "failed": [],
                              "note": "demo --bad-canary: the cycle's gate, not this adapter's"}, "suites": {}})
    clock.say(f"--bad-canary: v{version} (refuses everything) registered as the canary in place of v{cycle['canary_version']}")
    return version


def ramp_live(settings: Settings, config: str, version: str, start, clock: _Clock) -> dict[str, Any]:
    """Approve `version` and ramp it through a real `flywheel serve` process that simulated users talk to,
    in simulated days; prints week 1's A/B table. Returns the ramp flow's summary."""
    from tasks.registry import Registry

    Registry(settings).review(version, decision="approve", reviewer="auto-approve",
                              comment="demo: gate passed, approved automatically; the ramp decides on live traffic")
    shares = ", ".join(f"{s:g}" for s in settings.ramp.steps)
    clock.say(f"v{version} approved (--auto-approve): starting the model server and the canary ramp (shares {shares}; "
              f"{USERS_PER_DAY} users a simulated day, a look every {settings.ramp.look_every_hours:g} simulated hours)")
    with LiveServer(settings, settings.paths.under("serving")) as server:
        users = SimulatedUsers(server.url, settings, users_per_hour=USERS_PER_DAY / 24, seed=settings.simulate.seed)
        ramp = canary_ramp(version=version, config=config, workspace=str(settings.workspace), server_url=server.url,
                           clock=SimulatedClock(users, start=start))
    first = ramp["steps"][0] if ramp["steps"] else None
    if first:
        clock.say(f"week 1: canary share {first['share']:g} for {first['hours'] / 24:g} simulated days, "
                  f"decision {first['decision']}\n{ab_markdown(first['ab'])}")
    for step in ramp["steps"][1:]:
        clock.say(f"ramp: share {step['share']:g} for {step['hours'] / 24:g} simulated days: {step['decision']}")
    clock.say(f"ramp outcome: {ramp['outcome']}" + (f" ({ramp['reason']})" if ramp.get("reason") else "")
              + f"; live requests by arm: {users.answered}, refused: {users.refused}")
    return ramp


def _ramp_fields(ramp: dict[str, Any] | None) -> dict[str, Any]:
    """The ramp's part of the demo's JSON: week 1's A/B decision and refusal difference, every step."""
    first = ramp["steps"][0] if ramp and ramp["steps"] else None
    refusal = next(row for row in first["ab"]["metrics"] if row["metric"] == "refusal_rate") if first else None
    return {"ab_decision": first and first["decision"],
            "ab_refusal_diff": refusal and refusal["diff"],
            "ab_refusal_ci": refusal and refusal["ci"],
            "ramp_steps": [{k: step[k] for k in ("share", "looks", "hours", "decision")} for step in ramp["steps"]]
            if ramp else [],
            "ramp_outcome": ramp and ramp["outcome"]}


def _period(weeks: dict[int, dict], numbers: list[int], truth: dict) -> dict:
    """Monitoring's view of `numbers` (pooled over the weeks) beside the simulator's ground truth."""
    signals = [weeks[w]["monitoring"]["signals"] for w in numbers]
    records = sum(s["records"] for s in signals)
    checked = [s["unsupported"] for s in signals if s.get("unsupported")]
    decided = sum(c["checked"] - c["undecided"] for c in checked)
    return {
        "weeks": [weeks[w]["label"] for w in numbers],
        "records": records,
        "refusal_rate": round(sum(s["refusal_count"] for s in signals) / records, 4) if records else None,
        "reask_rate": round(sum(s["reask_count"] for s in signals) / records, 4) if records else None,
        "thumbs_down": sum(s["thumbs_down"] for s in signals),
        "unsupported_rate": round(sum(c["unsupported"] for c in checked) / decided, 4) if decided else None,
        "unsupported_checked": decided,
        "accuracy": truth["accuracy"],
        "wrong_answer_rate": truth["wrong_share"],
        "new_topic_records": truth["new_topic_records"],
        "new_topic_accuracy": truth["new_topic_accuracy"],
        "new_topic_refusal_share": truth["new_topic_refusal_share"],
    }


def _week_row(week: dict) -> dict:
    signals, drift = week["monitoring"]["signals"], week["monitoring"]["drift"]
    return {"week": week["label"], "model_version": week["traffic"]["model_version"], "records": signals["records"],
            "refusal_rate": signals["refusal_rate"], "reask_rate": signals["reask_rate"],
            "unsupported_rate": (signals.get("unsupported") or {}).get("unsupported_rate"), "kl": drift.get("kl"),
            "band": drift.get("band"), "triggered": week["monitoring"]["triggered"]}
