"""Calibration of the canary A/B test (issue 16): false alarms, power and sample-ratio mismatch on
simulated traffic, looked at after every simulated hour of a week.

    python benchmarks/ab_calibration.py [--runs 200] [--users 20000] [--seed 0] [--workers 2]

About 4 minutes of CPU (2 processes: about 2 minutes on 2 idle cores).

Traffic: `--users` users a week, each opening 1 + Poisson(1) sessions at uniform times; a session asks
about a product, and the answer is a refusal with the user's own propensity (Beta, mean 12%, so some
users are refused far more often: requests of one user are correlated, as in production) plus the
canary's handicap. A refused user re-asks within seconds (50%, up to twice); a served one sometimes
asks something else quickly (5%, not a re-ask). 5% of answers are rated (thumbs-down 60% after a
refusal, 10% otherwise), 0.2% fail (`metadata.error`). Prompts and responses are text (English, Korean
and French refusals among answers), users are assigned by the real `tasks.abtest.unit_hashes` with a
fresh salt per run, and every run's week goes through the real detectors (`request_outcomes`:
detect_refusals, detect_reasks) once; the per-request outcomes are then re-aggregated at each of the
168 hourly looks (running per-user sums, `tasks.sequential`), which is what `flywheel ab --until`
at each hour would compute (except that a re-ask is credited at the re-asked request's time). The first
runs of each scenario are also passed whole to `analyse_outcomes`, the code behind `flywheel ab`, and
must agree with the last look.

Scenarios (guardrails and margins: configs/default.yaml's abtest section; no unsupported-answer
verifier, so k = 4 guardrails):
  A/A        identical arms at share 0.5: a halt is wrong; so is an interval that ever excludes the true
             difference 0 (the confidence sequence's own guarantee). Side by side with a fixed-horizon
             z-interval (same level, same looks, same rule), and also judged with a zero refusal margin
             ("must not be worse"), where the margins no longer shield the fixed-horizon test.
  boundary   the canary's refusal rate worse by exactly the margin (2 points), share 0.5: an advance is
             wrong (the canary is not better than its margin).
  power      refusal rate 5 points worse at shares 0.25 and 0.05 (the ramp's first steps): share of runs
             halted within the week, the canary users exposed until the halt (median), and the hour.
  srm        10% of the users assigned to the canary are logged under the champion, at shares 0.05,
             0.25, 0.5: share of runs flagged within the week (assignment only, no text needed).
The handicaps are calibrated first (a large pilot without detectors), so that the request-level
refusal-rate difference is the stated one despite re-asks weighting refused users more.
Prints a table per scenario, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.stats import norm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.abtest import analyse_outcomes, ratio_inputs, request_outcomes, unit_hashes  # noqa: E402
from tasks.config import Settings  # noqa: E402
from tasks.sequential import ADVANCE, HALT, ArmSums, confidence_sequence, decide, difference, srm_flag  # noqa: E402

WEEK_S = 7 * 86_400
HOURS = 168
START_US = 1_767_571_200_000_000  # 2026-01-05T00:00:00Z
BASE_REFUSAL = 0.12
PROPENSITY_CONCENTRATION = 6.0  # Beta(a, b) with a + b = 6: strongly user-dependent refusal rates
REASK_AFTER_REFUSAL = 0.5
QUICK_SWITCH = 0.05
RATED = 0.05
DOWN_IF_REFUSED, DOWN_IF_ANSWERED = 0.6, 0.1
ERROR = 0.002

PRODUCTS = [f"{name} {model}" for name in ("Nimbus", "Aero", "Kite", "Orbit", "Pulse", "Vega", "Lumen", "Cobalt")
            for model in ("X1", "S2", "Pro", "Mini", "Max")]
INTENTS = [("reset", "Settings > System > Reset"), ("update the firmware of", "Settings > About > Update"),
           ("pair", "Bluetooth > Add device"), ("return", "Orders > Returns"), ("charge", "the USB-C port"),
           ("clean", "the care guide"), ("register", "Account > Devices"), ("mount", "the wall bracket kit")]
FIRST = ["how do I {i} my {p}?", "Hi! How can I {i} the {p}?", "{p}: what's the way to {i} it?"]
REASK = ["{p} - how do I {i} it? please try again", "again: {i} {p}, how??"]
SWITCH = ["and what is the warranty period on the {p}?", "do you ship the {p} abroad?"]
REFUSALS = ["I don't know how to {i} the {p}, sorry.", "I'm not sure about that.", "잘 모르겠습니다. 다른 질문을 해 주세요.",
            "I cannot help with the {p} right now.", "Je ne sais pas, désolé.", "I do not have information about the {p}."]
ANSWERS = ["To {i} the {p}, open {m} and follow the steps on screen.", "You can {i} the {p} from {m}; it takes a minute."]
GUARDRAILS = ("refusal_rate", "reask_rate", "thumbs_down_rate", "error_rate")
POWER_DIFF = 0.05
POWER_SHARES = (0.25, 0.05)


def _texts(templates: list[str]) -> list[str]:
    """Every template x product x intent, indexed (template * P + product) * I + intent."""
    return [t.format(p=p, i=i, m=m) for t in templates for p in PRODUCTS for i, m in INTENTS]


PROMPTS = _texts(FIRST) + _texts(REASK) + _texts(SWITCH)
RESPONSES = _texts(REFUSALS) + _texts(ANSWERS)
N_PI = len(PRODUCTS) * len(INTENTS)


# --------------------------------------------------------------------------------------------------
# traffic


def traffic(rng: np.random.Generator, users: int, arm_of_user: np.ndarray, handicap: float) -> dict[str, np.ndarray]:
    """One week of requests (numpy columns, unsorted). arm_of_user: 0 champion, 1 canary."""
    a = BASE_REFUSAL * PROPENSITY_CONCENTRATION
    propensity = rng.beta(a, PROPENSITY_CONCENTRATION - a, size=users)
    propensity = np.clip(propensity + handicap * arm_of_user, 0.0, 1.0)
    sessions = 1 + rng.poisson(1.0, size=users)
    user = np.repeat(np.arange(users), sessions)
    ts = rng.uniform(0, WEEK_S - 120, size=len(user))
    product = rng.integers(0, len(PRODUCTS), size=len(user))
    intent = rng.integers(0, len(INTENTS), size=len(user))
    kind = np.zeros(len(user), dtype=np.int8)  # 0 first, 1 re-ask, 2 quick switch
    parts = []
    refused = rng.random(len(user)) < propensity[user]
    latency = rng.lognormal(6.0, 0.4, size=len(user))
    parts.append((user, ts, product, intent, kind, refused, latency))
    for _ in range(2):  # follow-ons of the previous turn
        reask = refused & (rng.random(len(user)) < REASK_AFTER_REFUSAL)
        switch = ~refused & (kind == 0) & (rng.random(len(user)) < QUICK_SWITCH)
        nxt = reask | switch
        user, product, intent = user[nxt], product[nxt], intent[nxt]
        gap = np.where(reask[nxt], rng.uniform(3, 20, nxt.sum()), rng.uniform(5, 25, nxt.sum()))
        ts = ts[nxt] + latency[nxt] / 1000.0 + gap
        kind = np.where(reask[nxt], 1, 2).astype(np.int8)
        product = np.where(kind == 2, (product + 1 + rng.integers(0, len(PRODUCTS) - 1, len(user))) % len(PRODUCTS), product)
        refused = rng.random(len(user)) < propensity[user]
        latency = rng.lognormal(6.0, 0.4, size=len(user))
        parts.append((user, ts, product, intent, kind, refused, latency))
    cols = [np.concatenate(c) for c in zip(*parts)]
    out = dict(zip(("user", "ts", "product", "intent", "kind", "refused", "latency"), cols))
    n = len(out["user"])
    out["arm"] = arm_of_user[out["user"]]
    out["rated"] = rng.random(n) < RATED
    out["down"] = out["rated"] & (rng.random(n) < np.where(out["refused"], DOWN_IF_REFUSED, DOWN_IF_ANSWERED))
    out["error"] = rng.random(n) < ERROR
    return out


def log_table(t: dict[str, np.ndarray], rng: np.random.Generator) -> pa.Table:
    """The week as a log table (contracts.LOG_SCHEMA columns), built from dictionaries of texts."""
    n = len(t["user"])
    pi = t["product"] * len(INTENTS) + t["intent"]
    template = rng.integers(0, 3, n)
    prompt_idx = np.select([t["kind"] == 0, t["kind"] == 1],
                           [template * N_PI + pi, (len(FIRST) + template % 2) * N_PI + pi],
                           (len(FIRST) + len(REASK) + template % 2) * N_PI + pi)
    refusal_idx = rng.integers(0, len(REFUSALS), n) * N_PI + pi
    answer_idx = (len(REFUSALS) + rng.integers(0, len(ANSWERS), n)) * N_PI + pi
    response_idx = np.where(t["refused"], refusal_idx, answer_idx)
    metas = ['{"variant": "champion"}', '{"variant": "canary"}',
             '{"variant": "champion", "error": "upstream timeout"}', '{"variant": "canary", "error": "upstream timeout"}']
    meta_idx = t["arm"] + 2 * t["error"]
    ids = pa.array(np.arange(n)).cast(pa.string())
    users = pa.array(t["user"]).cast(pa.string())
    feedback = np.where(t["down"], -1, 1).astype(np.int8)

    def texts(indices: np.ndarray, values: list[str]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(values)).cast(pa.string())

    return pa.table({
        "request_id": pc.binary_join_element_wise("r-", ids, ""),
        "ts": pa.array(START_US + np.round(t["ts"] * 1e6).astype(np.int64)).cast(pa.timestamp("us", tz="UTC")),
        "user_id": pc.binary_join_element_wise("u-", users, ""),
        "prompt": texts(prompt_idx, PROMPTS),
        "response": texts(response_idx, RESPONSES),
        "model_version": texts(t["arm"].astype(np.int64), ["1", "2"]),
        "latency_ms": t["latency"],
        "feedback": pa.array(feedback, mask=~t["rated"]),
        "metadata": texts(meta_idx.astype(np.int64), metas),
    })


def assign_users(users: int, share: float, salt: str, lost: float, rng: np.random.Generator) -> np.ndarray:
    """Arms by the real keyed hash; `lost` of the canary's users logged under the champion (an SRM)."""
    ids = [f"u-{i}" for i in range(users)]
    arm = (unit_hashes(ids, salt) < share).astype(np.int64)
    if lost:
        arm[(arm == 1) & (rng.random(users) < lost)] = 0
    return arm


def calibrate(target: float, users: int = 400_000) -> float:
    """The propensity handicap whose request-level refusal-rate difference is `target` (re-asks weigh
    refused users more, so the two differ a little). A large pilot, generated truth, no detectors."""
    rng = np.random.default_rng(12345)
    arm = np.arange(users) % 2
    handicap = target
    for _ in range(3):  # fixed-point on a near-linear map
        t = traffic(rng, users, arm, handicap)
        diff = t["refused"][t["arm"] == 1].mean() - t["refused"][t["arm"] == 0].mean()
        handicap *= target / diff
    return float(handicap)


# --------------------------------------------------------------------------------------------------
# looks


def hourly_sums(outcomes, metrics: tuple[str, ...]) -> tuple[dict[str, tuple[ArmSums, ArmSums]], np.ndarray, np.ndarray]:
    """Per metric the (champion, canary) sums after each hour, and the users per arm then: running
    per-user totals, each request adding what it changes (for y: 2 Y_before y + y^2 to sum y^2, ...)."""
    hour = np.clip((outcomes.ts - START_US) // 3_600_000_000, 0, HOURS - 1)
    order = np.lexsort((outcomes.ts, outcomes.unit))
    unit, hour, arm = outcomes.unit[order], hour[order], outcomes.arm[order]
    first = np.r_[True, unit[1:] != unit[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(unit)), 0))
    masks = [arm == 0, arm == 1]

    def before(v: np.ndarray) -> np.ndarray:
        exclusive = np.cumsum(v) - v
        return exclusive - exclusive[start]

    def running(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.cumsum(np.bincount(hour[mask], weights=v[mask], minlength=HOURS))

    users = [running(first.astype(np.float64), m) for m in masks]
    sums = {}
    for metric in metrics:
        y, d = (v[order] for v in ratio_inputs(outcomes, metric))
        yb, db = before(y), before(d)
        deltas = {"y": y, "d": d, "yy": 2 * yb * y + y * y, "dd": 2 * db * d + d * d, "yd": yb * d + db * y + y * d}
        sums[metric] = tuple(ArmSums(n=users[code], **{k: running(v, masks[code]) for k, v in deltas.items()})
                             for code in (0, 1))
    return sums, users[0], users[1]


RULES = {  # decision rules judged on the same looks: the configured margins, and a zero refusal margin
    "configured margins": {},
    "refusal margin 0 (must not be worse)": {"refusal_rate": 0.0},
}


def judge_run(outcomes, settings: Settings, share: float, truth: dict[str, float]) -> dict:
    """Every hourly look of one run, with confidence sequences and with fixed-horizon intervals."""
    ab = settings.abtest
    level = ab.alpha / len(GUARDRAILS)
    t_opt = settings.ramp.min_users_per_arm / min(share, 1 - share)
    z = norm.ppf(1 - level / 2)
    sums, users_h, users_c = hourly_sums(outcomes, GUARDRAILS)
    bounds = {"sequential": ([], []), "fixed": ([], [])}
    for metric in GUARDRAILS:
        champion, canary = sums[metric]
        _, _, diff, var = difference(canary, champion)
        lo, hi = confidence_sequence(diff, var, users_h + users_c, level, t_opt)
        bounds["sequential"][0].append(lo)
        bounds["sequential"][1].append(hi)
        bounds["fixed"][0].append(diff - z * np.sqrt(var))
        bounds["fixed"][1].append(diff + z * np.sqrt(var))
    _, srm = srm_flag(users_c, users_h, share, p_threshold=ab.srm_p, min_users=ab.min_users_to_decide)
    known = np.array([m in truth for m in GUARDRAILS])  # metrics whose true difference is known
    true_diff = np.array([truth.get(m, np.nan) for m in GUARDRAILS])
    judged = np.minimum(users_c, users_h) >= ab.min_users_to_decide
    out = {"srm_ever": bool(srm.any()), "canary_users": int(users_c[-1])}
    for method, (los, his) in bounds.items():
        lo, hi = np.stack(los, axis=-1), np.stack(his, axis=-1)
        missed = judged[:, None] & known & ((lo > true_diff) | (hi < true_diff))
        out[method] = {"excluded_truth": bool(missed.any()), "last": {"lo": lo[-1].tolist(), "hi": hi[-1].tolist()}}
        for rule, changes in RULES.items():
            margins = np.array([changes.get(m, ab.margins[m]) for m in GUARDRAILS])
            codes = decide(lo, hi, margins, users_c, users_h, srm, min_users_to_decide=ab.min_users_to_decide,
                           min_users_per_arm=settings.ramp.min_users_per_arm)
            halts, advances = np.flatnonzero(codes == HALT), np.flatnonzero(codes == ADVANCE)
            out[method][rule] = {
                "halt": bool(len(halts)), "advance": bool(len(advances)),
                "halt_hour": int(halts[0]) + 1 if len(halts) else None,
                "canary_users_at_halt": int(users_c[halts[0]]) if len(halts) else None,
            }
    return out


# --------------------------------------------------------------------------------------------------
# scenarios


def one_run(job: tuple) -> dict:
    """One simulated week of a scenario: generate, detect (the real detectors, once), judge every look.
    The first `crosscheck` runs also go whole through `analyse_outcomes` (the code behind `flywheel
    ab`), whose intervals must equal the last look's."""
    name, run, users, share, handicap, truth, settings, seed, crosscheck = job
    rng = np.random.default_rng([seed, run])
    arm = assign_users(users, share, f"{name}-{seed}-{run}", 0.0, rng)
    t = traffic(rng, users, arm, handicap)
    table = log_table(t, rng)
    started = time.perf_counter()
    outcomes = request_outcomes(table, settings.signals)
    detect_s = time.perf_counter() - started
    judged = judge_run(outcomes, settings, share, truth)
    judged["refusal_agreement"] = float(np.mean(outcomes.refusal == t["refused"]))
    judged["detect_s"] = detect_s
    if run < crosscheck:
        full = analyse_outcomes(outcomes, settings.abtest, expected_share=share,
                                min_users_per_arm=settings.ramp.min_users_per_arm)
        rows = {row["metric"]: row for row in full["metrics"]}
        for j, metric in enumerate(GUARDRAILS):
            ci = rows[metric]["ci"]
            last = judged["sequential"]["last"]
            if not (math.isclose(ci[0], last["lo"][j], rel_tol=1e-6, abs_tol=1e-9)
                    and math.isclose(ci[1], last["hi"][j], rel_tol=1e-6, abs_tol=1e-9)):
                raise AssertionError(f"{name} run {run}: {metric} {ci} from analyse_outcomes != last look {last}")
    return judged


def scenario(pool: ProcessPoolExecutor, name: str, runs: int, users: int, share: float, handicap: float,
             truth: dict[str, float], settings: Settings, seed: int, crosscheck: int = 3) -> dict:
    jobs = [(name, run, users, share, handicap, truth, settings, seed, crosscheck) for run in range(runs)]
    per_run = list(pool.map(one_run, jobs, chunksize=4))
    detector_agreement = [r["refusal_agreement"] for r in per_run]
    detect_s = sum(r["detect_s"] for r in per_run)
    summary = {"runs": runs, "users_per_week": users, "share": share, "handicap": handicap, "true_diff": truth,
               "refusal_detector_agreement": float(np.mean(detector_agreement)), "detector_seconds": detect_s}
    for method in ("sequential", "fixed"):
        summary[method] = {"ever_excluded_truth": float(np.mean([r[method]["excluded_truth"] for r in per_run]))}
        for rule in RULES:
            rs = [r[method][rule] for r in per_run]
            halted = [r for r in rs if r["halt"]]
            summary[method][rule] = {
                "ever_halt": float(np.mean([r["halt"] for r in rs])),
                "ever_advance": float(np.mean([r["advance"] for r in rs])),
                "median_canary_users_at_halt": float(np.median([r["canary_users_at_halt"] for r in halted])) if halted else None,
                "median_halt_hour": float(np.median([r["halt_hour"] for r in halted])) if halted else None,
            }
    summary["ever_srm"] = float(np.mean([r["srm_ever"] for r in per_run]))
    summary["median_canary_users_week"] = float(np.median([r["canary_users"] for r in per_run]))
    return summary


def srm_scenario(runs: int, users: int, shares: list[float], lost: float, settings: Settings, seed: int) -> dict:
    """Share of runs whose hourly chi-square flags the mismatch within the week (users counted at
    their first request, spread uniformly over the week)."""
    rng = np.random.default_rng(seed)
    ab = settings.abtest
    out = {}
    for share in shares:
        flagged, flagged_clean = [], []
        for run in range(runs):
            for loss, sink in ((lost, flagged), (0.0, flagged_clean)):
                arm = assign_users(users, share, f"srm-{seed}-{share}-{run}-{loss}", loss, rng)
                hour = rng.integers(0, HOURS, size=users)  # first request of each user
                c = np.cumsum(np.bincount(hour[arm == 1], minlength=HOURS))
                h = np.cumsum(np.bincount(hour[arm == 0], minlength=HOURS))
                _, srm = srm_flag(c, h, share, p_threshold=ab.srm_p, min_users=ab.min_users_to_decide)
                sink.append(bool(srm.any()))
        out[str(share)] = {"flagged": float(np.mean(flagged)), "false_alarm_without_loss": float(np.mean(flagged_clean))}
    return {"runs": runs, "users_per_week": users, "canary_users_lost": lost, "by_share": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--users", type=int, default=20_000, help="users per simulated week")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes simulating runs in parallel")
    args = parser.parse_args()
    settings = Settings()
    margin = settings.abtest.margins["refusal_rate"]
    started = time.perf_counter()
    boundary_handicap, power_handicap = calibrate(margin), calibrate(POWER_DIFF)
    report = {"command": " ".join(["python", "benchmarks/ab_calibration.py", *sys.argv[1:]]), "alpha": settings.abtest.alpha,
              "guardrails": {m: settings.abtest.margins[m] for m in GUARDRAILS},
              "min_users_to_decide": settings.abtest.min_users_to_decide,
              "min_users_per_arm": settings.ramp.min_users_per_arm}
    pool = ProcessPoolExecutor(max_workers=args.workers)
    report["aa"] = scenario(pool, "aa", args.runs, args.users, 0.5, 0.0, dict.fromkeys(GUARDRAILS, 0.0), settings, args.seed)
    report["boundary"] = scenario(pool, "boundary", args.runs, args.users, 0.5, boundary_handicap, {"refusal_rate": margin},
                                  settings, args.seed + 1)
    for i, share in enumerate(POWER_SHARES):
        report[f"power_{share}"] = scenario(pool, f"power-{share}", args.runs, args.users, share, power_handicap,
                                            {"refusal_rate": POWER_DIFF}, settings, args.seed + 2 + i)
    pool.shutdown()
    report["srm"] = srm_scenario(args.runs, args.users, [0.05, 0.25, 0.5], 0.10, settings, args.seed + 9)
    report["seconds"] = round(time.perf_counter() - started, 1)
    print_tables(report, args)
    print(json.dumps(report))


def print_tables(report: dict, args: argparse.Namespace) -> None:
    aa, boundary = report["aa"], report["boundary"]
    configured, strict = RULES
    print(f"A/B calibration: {args.runs} runs per scenario, {args.users:,} users a week, {HOURS} hourly looks, "
          f"alpha {report['alpha']}, guardrails {report['guardrails']}, k = {len(GUARDRAILS)}")
    print(f"\n{'wrong decisions (share of runs, ever in the week)':58}{'sequential (CS)':>17}{'fixed-horizon':>15}")
    rows = [
        ("A/A, share 0.5: halted (guardrail or sample ratio)", aa, configured, "ever_halt"),
        ("A/A, share 0.5: halted, refusal margin 0", aa, strict, "ever_halt"),
        ("boundary (refusal +2 pts = margin): advanced", boundary, configured, "ever_advance"),
    ]
    for label, part, rule, key in rows:
        print(f"{label:58}{part['sequential'][rule][key]:>17.1%}{part['fixed'][rule][key]:>15.1%}")
    print(f"{'A/A: some guardrail interval excluded the true 0':58}{aa['sequential']['ever_excluded_truth']:>17.1%}"
          f"{aa['fixed']['ever_excluded_truth']:>15.1%}")
    print(f"{'A/A: sample-ratio alarm (chi-square peeked hourly)':58}{aa['ever_srm']:>17.1%}")
    print(f"{'A/A: advanced within the week (right)':58}{aa['sequential'][configured]['ever_advance']:>17.1%}"
          f"{aa['fixed'][configured]['ever_advance']:>15.1%}")
    print(f"\npower: refusal rate {POWER_DIFF:.0%} worse than the champion{'':21}{'sequential (CS)':>17}{'fixed-horizon':>15}")
    for share in POWER_SHARES:
        part = report[f"power_{share}"]
        seq, fixed = part["sequential"][configured], part["fixed"][configured]
        label = f"share {share} ({part['median_canary_users_week']:,.0f} canary users a week)"
        print(f"  {label:56}")
        for key, text, fmt in (("ever_halt", "halted within the week", "{:>17.1%}{:>15.1%}"),
                               ("median_canary_users_at_halt", "median canary users exposed until the halt", "{:>17,.0f}{:>15,.0f}"),
                               ("median_halt_hour", "median hour of the halt", "{:>17,.0f}{:>15,.0f}"),
                               ("ever_advance", "advanced (wrong)", "{:>17.1%}{:>15.1%}")):
            a, b = (float("nan") if v is None else v for v in (seq[key], fixed[key]))
            print(f"    {text:54}" + fmt.format(a, b))
    print(f"\nSRM: {report['srm']['canary_users_lost']:.0%} of the canary's users logged under the champion")
    for share, part in report["srm"]["by_share"].items():
        print(f"  share {share:>5}: flagged within the week in {part['flagged']:.1%} of runs "
              f"(no loss: {part['false_alarm_without_loss']:.1%})")
    print(f"\nrefusal detector agrees with the generated truth on {aa['refusal_detector_agreement']:.2%} of requests; "
          f"{report['seconds']} s in all")


if __name__ == "__main__":
    main()
