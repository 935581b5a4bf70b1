"""Canary vs champion on live traffic (DESIGN.md section 15): which arm a user is in (`assign`), and
what a window of the split's logs says (`analyse_ab`, behind `flywheel ab`).

Assignment
    variant = canary when H(salt, unit) < share, H a keyed hash (BLAKE2b, 64 bits) mapped uniformly
    onto [0, 1). The unit is the user id; a request without one is its own unit (the server
    names its user `anonymous:<request id>`). Deterministic and stateless beyond the salt, sticky per user, and
    monotone: raising the share only moves users from champion to canary, never back. The salt is
    `assignment_salt(settings.abtest, experiment)`: the secret in `abtest.salt_env` (when set) plus
    the experiment's name (the canary's model version), so each canary draws its users afresh.

Analysis
    Log records say their arm in `metadata.variant` ("champion" | "canary"); records without one are
    counted (`unassigned_records`) and left out. Per arm: requests, users, refusal rate, re-ask rate,
    thumbs-down rate among rated answers, feedback coverage, error rate (`metadata.error` set), latency
    p95 and the unsupported-answer rate. Refusals and re-asks come from the monitoring detectors
    (`tasks.signals.detect_refusals`, `detect_reasks`) run over the whole window, so `flywheel ab` and
    `flywheel signals` count the same things; a re-ask counts against the arm whose answer was re-asked.

    Unsupported answers: a verifier of answers against the documentation plugs in here. Pass
    `unsupported=` a per-record sequence of True / False / None (None: not checked), a callable taking
    the log table and returning one, or the name of a boolean column of the table; by default a column
    named `unsupported` is used when the table has one. Without any, the metric reads "no data" and is
    not judged; with one, `abtest.margins.unsupported_rate` guards it, so a canary that refuses less
    but makes up more cannot pass.

    Users, not requests, are the unit: every rate is a ratio of per-user sums, its interval clustered by
    user. Intervals are always-valid confidence sequences (`tasks.sequential`), at level 1 - alpha / k
    for the k guardrails with data; latency p95's interval is a user-level Poisson bootstrap (a
    fixed-horizon interval: p95 has no always-valid interval here, so leave its margin empty unless a
    looser check is acceptable). Then the sample-ratio-mismatch test and the advance / hold / halt rule
    of `tasks.sequential.decide`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import AbtestSettings, Settings, SignalsSettings
from tasks.sequential import (
    DECISIONS,
    ArmSums,
    confidence_sequence,
    decide,
    difference,
    srm_flag,
)
from tasks.signals import detect_reasks, detect_refusals

VARIANTS = ("champion", "canary")  # arm 0, arm 1
METHOD = "asymptotic confidence sequence (Waudby-Smith et al. 2021), users as clusters"

# Ratio metrics: name -> (numerator, denominator) per request, names of RequestOutcomes fields
# ("requests": 1 per request). Guardrails are the ones with a margin in abtest.margins.
RATIO_METRICS = {
    "refusal_rate": ("refusal", "requests"),
    "reask_rate": ("reasked", "requests"),
    "thumbs_down_rate": ("down", "rated"),
    "feedback_coverage": ("rated", "requests"),
    "error_rate": ("error", "requests"),
    "unsupported_rate": ("unsupported", "checked"),
}
LATENCY_METRIC = "latency_p95_ms"
LATENCY_QUANTILE = 0.95

UnsupportedInput = Sequence[bool | None] | np.ndarray | pa.Array | pa.ChunkedArray | Callable[[pa.Table], Any] | str | None


# --------------------------------------------------------------------------------------------------
# assignment


@functools.lru_cache(maxsize=64)
def _hash_key(salt: str) -> bytes:
    return hashlib.sha256(salt.encode("utf-8")).digest()  # any salt length -> a 32-byte BLAKE2b key


def unit_hash(unit_id: str, salt: str) -> float:
    """H(salt, unit) in [0, 1): a keyed 64-bit BLAKE2b digest divided by 2^64."""
    digest = hashlib.blake2b(unit_id.encode("utf-8"), key=_hash_key(salt), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def unit_hashes(unit_ids: Sequence[str], salt: str) -> np.ndarray:
    """`unit_hash` of many units at once."""
    key = _hash_key(salt)
    blake = hashlib.blake2b
    ints = np.fromiter(
        (int.from_bytes(blake(u.encode("utf-8"), key=key, digest_size=8).digest(), "big") for u in unit_ids),
        dtype=np.uint64,
        count=len(unit_ids),
    )
    return ints.astype(np.float64) / 2.0**64


def _check_share(share: float) -> None:
    if not 0.0 <= share <= 1.0 or math.isnan(share):
        raise ValueError(f"the canary share must be in [0, 1], got {share}")


def assign(unit_id: str, share: float, salt: str) -> str:
    """"canary" when H(salt, unit_id) < share, else "champion"."""
    _check_share(share)
    return VARIANTS[1] if unit_hash(unit_id, salt) < share else VARIANTS[0]


def assignment_salt(settings: AbtestSettings, experiment: str) -> str:
    """The salt of one experiment (e.g. the canary's model version): the secret in the environment
    variable `abtest.salt_env` when set, joined with the experiment's name."""
    if not experiment:
        raise ValueError("assignment_salt needs the experiment's name (e.g. the canary's model version)")
    return f"{os.environ.get(settings.salt_env, '')}:{experiment}"


# --------------------------------------------------------------------------------------------------
# per-request outcomes


@dataclass
class RequestOutcomes:
    """What each assigned request contributes, the real detectors already run. Arrays, one entry per
    assigned record: `arm` (0 champion, 1 canary), `unit` (index of the user within its arm, 0..units-1
    over both arms), `ts` (epoch microseconds), and per metric the numerator / denominator fields of
    RATIO_METRICS (floats; `unsupported`/`checked` are 0 where nothing was checked), `latency` (NaN
    when unknown)."""

    arm: np.ndarray
    unit: np.ndarray
    unit_arm: np.ndarray  # arm of each unit
    ts: np.ndarray
    refusal: np.ndarray
    reasked: np.ndarray
    rated: np.ndarray
    down: np.ndarray
    error: np.ndarray
    unsupported: np.ndarray
    checked: np.ndarray
    latency: np.ndarray
    model_versions: dict[str, list[str]]
    unassigned_records: int
    users_in_both: int

    @property
    def requests(self) -> np.ndarray:
        return np.ones(len(self.arm), dtype=np.float64)


def _metadata_fields(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(variant code per row: 0 champion, 1 canary, -1 none; error flag per row) from the JSON text
    of `metadata`, parsed once per distinct value. Invalid or missing metadata: no variant, no error;
    an error is a `metadata.error` that is present and not null, false or empty."""
    n = table.num_rows
    if "metadata" not in table.column_names or n == 0:
        return np.full(n, -1, dtype=np.int8), np.zeros(n, dtype=bool)
    column = table.column("metadata")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    encoded = column.cast(pa.string()).combine_chunks().dictionary_encode()
    distinct = encoded.dictionary.to_pylist()
    variants = np.full(len(distinct), -1, dtype=np.int8)
    errors = np.zeros(len(distinct), dtype=bool)
    for i, text in enumerate(distinct):
        try:
            meta = json.loads(text)
        except (TypeError, ValueError):
            continue
        if isinstance(meta, dict):
            variant = meta.get("variant")
            variants[i] = VARIANTS.index(variant) if variant in VARIANTS else -1
            errors[i] = meta.get("error") not in (None, False, "")
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    known = codes >= 0
    variant_per_row = np.full(n, -1, dtype=np.int8)
    error_per_row = np.zeros(n, dtype=bool)
    variant_per_row[known] = variants[codes[known]]
    error_per_row[known] = errors[codes[known]]
    return variant_per_row, error_per_row


def _unsupported_flags(table: pa.Table, unsupported: UnsupportedInput) -> np.ndarray:
    """Per record 1.0 (unsupported), 0.0 (checked, supported) or NaN (not checked)."""
    n = table.num_rows
    if unsupported is None:
        if "unsupported" not in table.column_names:
            return np.full(n, np.nan)
        unsupported = "unsupported"
    if isinstance(unsupported, str):
        if unsupported not in table.column_names:
            raise ValueError(f"unsupported: the log table has no column {unsupported!r}; columns: {table.column_names}")
        values = table.column(unsupported)
    elif callable(unsupported):
        values = unsupported(table)
    else:
        values = unsupported
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_pylist()
    flags = np.array([np.nan if v is None else float(bool(v)) for v in values], dtype=np.float64)
    if len(flags) != n:
        raise ValueError(f"unsupported: {len(flags)} verdicts for {n} log records; give one per record (None: not checked)")
    return flags


def request_outcomes(table: pa.Table, signals: SignalsSettings, *, unsupported: UnsupportedInput = None) -> RequestOutcomes:
    """Run the monitoring detectors over the window (every record, so the re-ask detector sees each
    user's whole sequence) and keep what each assigned record contributes to each metric."""
    missing = [c for c in ("request_id", "user_id", "ts", "prompt", "response") if c not in table.column_names]
    if missing:
        raise ValueError(f"A/B analysis: the log table lacks column(s) {missing}; expected contracts.LOG_SCHEMA")
    variant, error = _metadata_fields(table)
    refusal = detect_refusals(table.column("response"), signals)
    reask_of = detect_reasks(table, signals)
    reasked = np.zeros(table.num_rows, dtype=bool)
    reasked[reask_of[reask_of >= 0]] = True
    if "feedback" in table.column_names:
        feedback = table.column("feedback").cast(pa.int8()).fill_null(0).to_numpy()
    else:
        feedback = np.zeros(table.num_rows, dtype=np.int8)
    if "latency_ms" in table.column_names:
        latency = table.column("latency_ms").cast(pa.float64()).fill_null(np.nan).to_numpy()
    else:
        latency = np.full(table.num_rows, np.nan)
    flags = _unsupported_flags(table, unsupported)

    rows = np.flatnonzero(variant >= 0)
    arm = variant[rows].astype(np.int64)
    user = table.column("user_id").take(pa.array(rows)).cast(pa.string())
    request = table.column("request_id").take(pa.array(rows)).cast(pa.string())
    anonymous = pc.fill_null(pc.equal(pc.fill_null(user, ""), ""), True)
    unit_key = pc.if_else(anonymous, pc.binary_join_element_wise("request:", request, ""), user)
    codes = unit_key.combine_chunks().dictionary_encode().indices.to_numpy(zero_copy_only=False).astype(np.int64)
    pairs, unit = np.unique(codes * 2 + arm, return_inverse=True)
    unit_arm = (pairs % 2).astype(np.int8)
    users_in_both = int(np.sum(np.bincount(pairs // 2) == 2)) if len(pairs) else 0

    versions: dict[str, list[str]] = {name: [] for name in VARIANTS}
    if "model_version" in table.column_names and len(rows):
        column = table.column("model_version").take(pa.array(rows))
        for code, name in enumerate(VARIANTS):
            chosen = column.filter(pa.array(arm == code))
            versions[name] = sorted(str(v) for v in pc.unique(chosen).to_pylist() if v is not None)
    ts = table.column("ts").take(pa.array(rows))
    if pa.types.is_timestamp(ts.type):
        ts = ts.cast(pa.timestamp("us", tz=ts.type.tz))
    checked = ~np.isnan(flags[rows])
    return RequestOutcomes(
        arm=arm.astype(np.int8),
        unit=unit.astype(np.int64),
        unit_arm=unit_arm,
        ts=ts.cast(pa.int64()).to_numpy().astype(np.int64),
        refusal=refusal[rows].astype(np.float64),
        reasked=reasked[rows].astype(np.float64),
        rated=(feedback[rows] != 0).astype(np.float64),
        down=(feedback[rows] == -1).astype(np.float64),
        error=error[rows].astype(np.float64),
        unsupported=np.where(checked, np.nan_to_num(flags[rows]), 0.0),
        checked=checked.astype(np.float64),
        latency=latency[rows],
        model_versions=versions,
        unassigned_records=int(table.num_rows - len(rows)),
        users_in_both=users_in_both,
    )


def ratio_inputs(outcomes: RequestOutcomes, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(numerator, denominator) per request of a ratio metric."""
    numerator, denominator = RATIO_METRICS[metric]
    return getattr(outcomes, numerator), getattr(outcomes, denominator)


def arm_sums(outcomes: RequestOutcomes, metric: str) -> tuple[ArmSums, ArmSums]:
    """(champion, canary) sufficient statistics of a ratio metric over users."""
    y, d = ratio_inputs(outcomes, metric)
    units = len(outcomes.unit_arm)
    per_y = np.bincount(outcomes.unit, weights=y, minlength=units)
    per_d = np.bincount(outcomes.unit, weights=d, minlength=units)
    mask = outcomes.unit_arm == 1
    return ArmSums.of_users(per_y[~mask], per_d[~mask]), ArmSums.of_users(per_y[mask], per_d[mask])


# --------------------------------------------------------------------------------------------------
# analysis


def _p95(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.quantile(values, LATENCY_QUANTILE, method="inverted_cdf")) if len(values) else None


def _latency_bootstrap(outcomes: RequestOutcomes, alpha: float, samples: int, seed: int) -> list[float] | None:
    """Interval of p95(canary) - p95(champion) from a Poisson bootstrap over users: each resample
    weighs every user by a Poisson(1) count, and a weighted p95 is read off each arm's sorted
    latencies (memory bounded by resampling in blocks)."""
    known = ~np.isnan(outcomes.latency)
    arms = []
    for code in (0, 1):
        rows = np.flatnonzero(known & (outcomes.arm == code))
        if len(rows) == 0:
            return None
        order = np.argsort(outcomes.latency[rows], kind="stable")
        arms.append((outcomes.latency[rows][order], outcomes.unit[rows][order]))
    rng = np.random.default_rng(seed)
    n_units = len(outcomes.unit_arm)
    block = max(1, 4_000_000 // max(len(arms[0][0]), len(arms[1][0])))
    diffs: list[np.ndarray] = []
    for start in range(0, samples, block):
        weights = rng.poisson(1.0, size=(min(block, samples - start), n_units)).astype(np.float64)
        p95s = []
        for latencies, units in arms:
            cumulative = np.cumsum(weights[:, units], axis=1)
            total = cumulative[:, -1:]
            first = np.argmax(cumulative >= LATENCY_QUANTILE * total, axis=1)
            p95s.append(np.where(total[:, 0] > 0, latencies[first], np.nan))
        diffs.append(p95s[1] - p95s[0])
    values = np.concatenate(diffs)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    return [float(np.quantile(values, alpha / 2)), float(np.quantile(values, 1 - alpha / 2))]


def _num(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _variant_summary(outcomes: RequestOutcomes, code: int, name: str, sums: dict[str, tuple[ArmSums, ArmSums]]) -> dict:
    mask = outcomes.arm == code
    out: dict[str, Any] = {
        "requests": int(mask.sum()),
        "users": int(np.sum(outcomes.unit_arm == code)),
        "model_versions": outcomes.model_versions[name],
    }
    for metric, pair in sums.items():
        arm = pair[code]
        out[metric] = _num(arm.y / arm.d) if arm.d > 0 else None
    out["rated"] = int(outcomes.rated[mask].sum())
    out["checked"] = int(outcomes.checked[mask].sum())
    out[LATENCY_METRIC] = _p95(outcomes.latency[mask])
    return out


def analyse_outcomes(
    outcomes: RequestOutcomes, abtest: AbtestSettings, *, expected_share: float, min_users_per_arm: int
) -> dict[str, Any]:
    """The A/B result (the `flywheel ab --json` object) of assigned requests' outcomes."""
    _check_share(expected_share)
    sums = {metric: arm_sums(outcomes, metric) for metric in RATIO_METRICS}
    users = [int(np.sum(outcomes.unit_arm == code)) for code in (0, 1)]
    variants = {name: _variant_summary(outcomes, code, name, sums) for code, name in enumerate(VARIANTS)}

    def has_data(metric: str) -> bool:
        if metric == LATENCY_METRIC:
            return bool((~np.isnan(outcomes.latency)).any())
        return any(arm.d > 0 for arm in sums[metric])

    margins = {m: abtest.margins.get(m) for m in [*RATIO_METRICS, LATENCY_METRIC]}
    guarded = [m for m, margin in margins.items() if margin is not None and has_data(m)]
    k = max(1, len(guarded))
    level_alpha = abtest.alpha / k
    total = users[0] + users[1]
    smaller = min(expected_share, 1.0 - expected_share)
    t_opt = min_users_per_arm / smaller if smaller > 0 else float(min_users_per_arm)

    metrics: list[dict[str, Any]] = []
    for metric in RATIO_METRICS:
        champion, canary = sums[metric]
        r_c, r_h, diff, variance = difference(canary, champion)
        lo, hi = confidence_sequence(diff, variance, total, level_alpha, t_opt)
        metrics.append(_metric_row(metric, r_h, r_c, diff, lo, hi, margins[metric], metric in guarded, "confidence_sequence"))
    lat_h, lat_c = variants["champion"][LATENCY_METRIC], variants["canary"][LATENCY_METRIC]
    lat_diff = lat_c - lat_h if lat_c is not None and lat_h is not None else np.nan
    lat_ci = _latency_bootstrap(outcomes, level_alpha, abtest.bootstrap_samples, abtest.seed) if lat_c is not None and lat_h is not None else None
    metrics.append(_metric_row(
        LATENCY_METRIC, np.nan if lat_h is None else lat_h, np.nan if lat_c is None else lat_c, lat_diff,
        lat_ci[0] if lat_ci else np.nan, lat_ci[1] if lat_ci else np.nan,
        margins[LATENCY_METRIC], LATENCY_METRIC in guarded, "bootstrap",
    ))

    srm_p, srm = srm_flag(users[1], users[0], expected_share, p_threshold=abtest.srm_p, min_users=abtest.min_users_to_decide)
    rows = [row for row in metrics if row["guardrail"]]
    lo = np.array([np.nan if row["ci"] is None else row["ci"][0] for row in rows])
    hi = np.array([np.nan if row["ci"] is None else row["ci"][1] for row in rows])
    code = int(decide(  # with no guardrail at all, enough users and no mismatch advance
        lo, hi, np.array([row["margin"] for row in rows], dtype=np.float64), users[1], users[0], srm,
        min_users_to_decide=abtest.min_users_to_decide, min_users_per_arm=min_users_per_arm,
    ))
    result = {
        "variants": variants,
        "metrics": metrics,
        "srm_p": float(srm_p),
        "srm": bool(srm),
        "decision": DECISIONS[code],
        "expected_share": expected_share,
        "observed_share": users[1] / total if total else None,
        "alpha": abtest.alpha,
        "interval_level": 1.0 - level_alpha,
        "method": METHOD,
        "min_users_to_decide": abtest.min_users_to_decide,
        "min_users_per_arm": min_users_per_arm,
        "unassigned_records": outcomes.unassigned_records,
        "users_in_both": outcomes.users_in_both,
    }
    result["reasons"] = _reasons(result, users, abtest)
    return result


def _metric_row(metric: str, champion: Any, canary: Any, diff: Any, lo: Any, hi: Any, margin: float | None,
                guardrail: bool, method: str) -> dict[str, Any]:
    lo, hi = _num(lo), _num(hi)
    ci = None if lo is None or hi is None else [lo, hi]
    return {
        "metric": metric,
        "champion": _num(champion),
        "canary": _num(canary),
        "diff": _num(diff),
        "ci": ci,
        "margin": margin,
        "guardrail": guardrail,
        "breached": bool(guardrail and ci is not None and ci[0] > margin),
        "inside": bool(guardrail and ci is not None and ci[1] < margin),
        "method": method,
    }


def _reasons(result: dict[str, Any], users: list[int], abtest: AbtestSettings) -> list[str]:
    """Why the decision is what it is, one line per cause, for the table and the ramp's artifact."""
    reasons: list[str] = []
    fewest = min(users)
    if result["srm"]:
        reasons.append(
            f"sample-ratio mismatch: {users[1]} canary vs {users[0]} champion users where the canary share should be "
            f"{result['expected_share']:g} (chi-square p = {result['srm_p']:.2g} < {abtest.srm_p:g}); the split is broken, "
            "no metric of this step can be trusted"
        )
    judged = fewest >= abtest.min_users_to_decide
    for row in result["metrics"]:
        if not row["guardrail"]:
            continue
        if row["breached"] and judged:
            reasons.append(f"{row['metric']} rose by {row['diff']:.4g} {_interval(row['ci'])}, wholly beyond its margin {row['margin']:g}")
        elif not row["inside"] and result["decision"] != "halt":
            reasons.append(f"{row['metric']}: {_interval(row['ci'])} not yet wholly below its margin {row['margin']:g}")
    if not judged:
        reasons.append(f"too few users to judge: {users[1]} canary, {users[0]} champion (need {abtest.min_users_to_decide} per arm)")
    elif result["decision"] != "halt" and fewest < result["min_users_per_arm"]:
        reasons.append(f"{fewest} users in the smaller arm; an advance needs {result['min_users_per_arm']} per arm")
    for row in result["metrics"]:
        if row["metric"] in abtest.margins and abtest.margins[row["metric"]] is not None and not row["guardrail"]:
            reasons.append(f"{row['metric']}: no data in either arm, not judged")
    if result["unassigned_records"]:
        reasons.append(f"{result['unassigned_records']} records carry no metadata.variant and were left out")
    if result["users_in_both"]:
        reasons.append(f"{result['users_in_both']} users were served by both arms (assignment not sticky within the window?)")
    if result["decision"] == "advance":
        reasons.insert(0, "every guardrail's interval lies wholly below its margin, with enough users in each arm")
    return reasons


def _interval(ci: list[float] | None) -> str:
    return "[n/a]" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def analyse_ab(
    table: pa.Table, settings: Settings, expected_share: float, *, unsupported: UnsupportedInput = None
) -> dict[str, Any]:
    """A/B analysis of a window of logs (a table in contracts.LOG_SCHEMA) split at `expected_share`."""
    _check_share(expected_share)
    outcomes = request_outcomes(table, settings.signals, unsupported=unsupported)
    return analyse_outcomes(outcomes, settings.abtest, expected_share=expected_share,
                            min_users_per_arm=settings.ramp.min_users_per_arm)
