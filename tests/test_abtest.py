"""Canary A/B: sticky, monotone assignment; the sample-ratio check; the advance / hold / halt rule at
its edges; intervals that cluster by user; agreement with the monitoring signals; and `flywheel ab`
on crafted logs whose answer is known."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.abtest import analyse_ab, assign, assignment_salt, unit_hash, unit_hashes
from tasks.config import ConfigError, Settings, load_settings
from tasks.contracts import LOG_SCHEMA
from tasks.sequential import ADVANCE, HALT, HOLD, ArmSums, confidence_sequence, decide, difference, srm_flag, srm_pvalue
from tasks.signals import compute_signals

START = datetime(2026, 3, 2, tzinfo=timezone.utc)
ANSWER = "You can reset it from Settings > System > Reset."
REFUSAL = "I don't know, sorry."


# --------------------------------------------------------------------------------------------------
# assignment


def test_assignment_is_sticky_deterministic_and_monotone_in_the_share() -> None:
    users = [f"user-{i}" for i in range(5000)]
    salt = "secret:7"
    canary_at = {share: {u for u in users if assign(u, share, salt) == "canary"} for share in (0.0, 0.05, 0.25, 0.5, 1.0)}
    assert canary_at[0.0] == set() and canary_at[1.0] == set(users)
    # raising the share only moves users from champion to canary
    assert canary_at[0.05] <= canary_at[0.25] <= canary_at[0.5]
    # the same user gets the same arm every time, and from the vectorised hash too
    assert all(assign(u, 0.25, salt) == assign(u, 0.25, salt) for u in users[:200])
    assert np.array_equal(unit_hashes(users, salt) < 0.25, np.array([u in canary_at[0.25] for u in users]))
    # the hash is uniform: each share is met within 4 binomial standard errors
    for share in (0.05, 0.25, 0.5):
        se = math.sqrt(share * (1 - share) / len(users))
        assert abs(len(canary_at[share]) / len(users) - share) < 4 * se
    # another salt (another experiment) draws other users
    other = {u for u in users if assign(u, 0.5, "secret:8") == "canary"}
    assert 0.4 < len(other & canary_at[0.5]) / len(canary_at[0.5]) < 0.6


def test_a_share_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        assign("alice", 1.5, "s")


def test_the_salt_joins_the_secret_and_the_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings().abtest
    monkeypatch.delenv(settings.salt_env, raising=False)
    plain = assignment_salt(settings, "7")
    monkeypatch.setenv(settings.salt_env, "hunter2")
    keyed = assignment_salt(settings, "7")
    assert plain != keyed and keyed != assignment_salt(settings, "8")
    assert unit_hash("alice", keyed) != unit_hash("alice", plain)
    with pytest.raises(ValueError, match="experiment"):
        assignment_salt(settings, "")


# --------------------------------------------------------------------------------------------------
# sample-ratio mismatch


def test_srm_p_value_is_the_chi_square_of_users_against_the_share() -> None:
    # 450 vs 550 at an even split: chi-square = 2 * 50^2 / 500 = 10; with 1 df, p = erfc(sqrt(10 / 2))
    assert srm_pvalue(450, 550, 0.5) == pytest.approx(math.erfc(math.sqrt(5.0)))
    assert srm_pvalue(50, 950, 0.05) == pytest.approx(1.0)
    p, flagged = srm_flag(np.array([5000, 4500]), np.array([5000, 5500]), 0.5, p_threshold=0.0005, min_users=100)
    assert not flagged[0] and flagged[1] and p[1] < 1e-20


def test_srm_needs_the_expected_users_and_catches_a_starved_arm() -> None:
    # 3 canary users where 10 were expected: p ~ 0.02, no alarm; 0 of 500 expected: alarm
    assert not srm_flag(3, 197, 0.05, p_threshold=0.0005, min_users=5)[1]
    assert srm_flag(0, 10_000, 0.05, p_threshold=0.0005, min_users=100)[1]
    # too few users expected in the smaller arm: the chi-square is not trusted yet
    assert not srm_flag(0, 1_000, 0.05, p_threshold=0.0005, min_users=100)[1]
    # a share of 1 expects no champion user at all
    assert srm_flag(10, 1, 1.0, p_threshold=0.0005, min_users=100)[1]
    assert not srm_flag(10, 0, 1.0, p_threshold=0.0005, min_users=100)[1]


# --------------------------------------------------------------------------------------------------
# decision rule


def _decide(lo: float, hi: float, users: int = 2000, srm: bool = False) -> int:
    return int(decide(np.array([lo, -0.01]), np.array([hi, 0.001]), np.array([0.02, 0.01]), users, users, srm,
                      min_users_to_decide=100, min_users_per_arm=1000))


def test_decision_edges_of_the_margin() -> None:
    assert _decide(-0.01, 0.0199) == ADVANCE  # wholly inside
    assert _decide(-0.01, 0.0201) == HOLD  # reaches over the margin: not proven
    assert _decide(0.0199, 0.05) == HOLD  # straddles the margin
    assert _decide(0.0201, 0.05) == HALT  # wholly beyond
    assert _decide(np.nan, np.nan) == HOLD  # nothing known: hold


def test_decision_edges_of_the_user_counts_and_srm() -> None:
    assert _decide(0.05, 0.09, users=99) == HOLD  # a breach is not judged on too few users
    assert _decide(0.05, 0.09, users=100) == HALT
    assert _decide(-0.01, 0.01, users=999) == HOLD  # inside, but not enough users to advance
    assert _decide(-0.01, 0.01, users=1000) == ADVANCE
    assert _decide(-0.01, 0.01, users=5000, srm=True) == HALT  # a broken split halts whatever the metrics


# --------------------------------------------------------------------------------------------------
# intervals


def test_ratio_variance_clusters_by_user_and_the_sequence_is_wider_than_a_fixed_interval() -> None:
    rng = np.random.default_rng(3)
    # 300 users per arm, 1-9 requests each, each user with their own refusal propensity
    arms = []
    for _ in range(2):
        d = rng.integers(1, 10, 300).astype(float)
        y = rng.binomial(d.astype(int), rng.beta(0.5, 3.0, 300)).astype(float)
        arms.append((y, d))
    (yc, dc), (yh, dh) = arms
    r_c, r_h, diff, var = difference(ArmSums.of_users(yc, dc), ArmSums.of_users(yh, dh))

    def cluster_var(y: np.ndarray, d: np.ndarray) -> float:  # sum of squared per-user residuals, n/(n-1)
        r = y.sum() / d.sum()
        return sum((yi - r * di) ** 2 for yi, di in zip(y, d)) / d.sum() ** 2 * len(y) / (len(y) - 1)

    assert r_c == pytest.approx(yc.sum() / dc.sum()) and diff == pytest.approx(r_c - r_h)
    assert var == pytest.approx(cluster_var(yc, dc) + cluster_var(yh, dh))
    # requests of one user are alike, so treating requests as independent understates the variance
    naive = r_c * (1 - r_c) / dc.sum() + r_h * (1 - r_h) / dh.sum()
    assert var > 1.5 * naive
    lo, hi = confidence_sequence(diff, var, 600, 0.05, 600)
    assert lo < diff < hi
    assert hi - diff > 1.96 * math.sqrt(var)  # the price of looking as often as one likes
    # narrower as users accumulate (same per-user variance, 4x the users)
    lo4, hi4 = confidence_sequence(diff, var / 4, 2400, 0.05, 600)
    assert hi4 - lo4 < (hi - lo) / 1.5


# --------------------------------------------------------------------------------------------------
# analysis over logs


def _records(arm: str, users: int, *, refusals_per_user: dict[int, int], first_user: int = 0, requests: int = 3,
             version: str = "1", rated: dict[int, int] | None = None, errors: set[int] = frozenset(),
             latency: float = 200.0) -> list[dict]:
    """`users` users of one arm, each asking `requests` different questions an hour apart (no re-asks).
    refusals_per_user: user index -> how many of their answers are refusals; rated: user -> feedback."""
    out = []
    for u in range(first_user, first_user + users):
        for k in range(requests):
            refused = k < refusals_per_user.get(u, 0)
            out.append({
                "request_id": f"{arm}-{u}-{k}",
                "ts": (START + timedelta(minutes=u % 600, hours=k)).isoformat(),
                "user_id": f"user-{u}",
                "prompt": f"question {k} of user {u}: how do I pair device number {k}?",
                "response": REFUSAL if refused else ANSWER,
                "model_version": version,
                "latency_ms": latency + k,
                "feedback": (rated or {}).get(u) if k == 0 else None,
                "metadata": {"variant": arm, **({"error": "timeout"} if (u, k) in errors else {})},
            })
    return out


def _write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _table(records: list[dict]) -> pa.Table:
    rows = [dict(r, ts=datetime.fromisoformat(r["ts"]), metadata=json.dumps(r["metadata"])) for r in records]
    return pa.Table.from_pylist(rows, schema=LOG_SCHEMA)


runner = CliRunner()


def _ab(*args: str) -> tuple[int, dict, str]:
    result = runner.invoke(app, ["ab", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = result.stdout.strip().splitlines()
    return result.exit_code, json.loads(lines[-1]) if "--json" in args else {}, result.stdout


def test_flywheel_ab_halts_a_canary_that_refuses_more(tmp_path: Path) -> None:
    # champion: 60 of 400 users refused once in 3 -> 60/1200 = 5%; canary: 150 of 400 refused 3 times -> 37.5%
    champion = _records("champion", 400, refusals_per_user={u: 1 for u in range(60)}, version="3",
                        rated={u: -1 if u < 10 else 1 for u in range(40)}, errors={(1, 0), (2, 0)}, latency=200.0)
    canary = _records("canary", 400, first_user=400, refusals_per_user={u: 3 for u in range(400, 550)}, version="4",
                      rated={u: -1 for u in range(400, 420)}, latency=300.0)
    logs = _write(tmp_path / "logs" / "ab.jsonl", champion + canary)
    code, out, _ = _ab(str(logs), "--expected-share", "0.5", "-w", str(tmp_path / "ws"), "--json")
    assert code == 1 and out["decision"] == "halt"
    ch, ca = out["variants"]["champion"], out["variants"]["canary"]
    assert (ch["requests"], ch["users"], ca["requests"], ca["users"]) == (1200, 400, 1200, 400)
    assert (ch["model_versions"], ca["model_versions"]) == (["3"], ["4"])
    metrics = {m["metric"]: m for m in out["metrics"]}
    refusal = metrics["refusal_rate"]
    assert (refusal["champion"], refusal["canary"]) == (pytest.approx(0.05), pytest.approx(0.375))
    assert refusal["diff"] == pytest.approx(0.325)
    assert refusal["margin"] == 0.02 and refusal["breached"] and refusal["ci"][0] > 0.02
    assert refusal["ci"][0] < 0.325 < refusal["ci"][1]
    # thumbs-down among rated answers: 10 of 40 vs 20 of 20; coverage 40/1200 vs 20/1200
    assert metrics["thumbs_down_rate"]["champion"] == pytest.approx(0.25)
    assert metrics["thumbs_down_rate"]["canary"] == pytest.approx(1.0)
    assert metrics["feedback_coverage"]["champion"] == pytest.approx(40 / 1200)
    assert metrics["error_rate"]["champion"] == pytest.approx(2 / 1200) and metrics["error_rate"]["canary"] == 0.0
    assert metrics["reask_rate"]["diff"] == 0.0  # questions an hour apart are not re-asks
    assert metrics["latency_p95_ms"]["champion"] == 202.0 and metrics["latency_p95_ms"]["canary"] == 302.0
    assert not metrics["latency_p95_ms"]["guardrail"]  # no margin by default: reported only
    assert not metrics["unsupported_rate"]["guardrail"]  # no verifier plugged in: no data
    assert out["srm_p"] == pytest.approx(1.0) and out["srm"] is False
    assert any("refusal_rate rose by" in r for r in out["reasons"])
    assert any("unsupported_rate: no data" in r for r in out["reasons"])


def test_flywheel_ab_advances_identical_arms_and_prints_a_table(tmp_path: Path) -> None:
    # 1500 users per arm with the same pattern: 6% of users refused once in 3 requests
    refused = {u: 1 for u in range(0, 1500, 16)}
    champion = _records("champion", 1500, refusals_per_user=refused)
    canary = _records("canary", 1500, first_user=1500, refusals_per_user={u + 1500: 1 for u in refused})
    logs = _write(tmp_path / "logs" / "same.jsonl", champion + canary)
    code, out, _ = _ab(str(logs), "--expected-share", "0.5", "-w", str(tmp_path / "ws"), "--json")
    assert code == 0 and out["decision"] == "advance", out["reasons"]
    refusal = next(m for m in out["metrics"] if m["metric"] == "refusal_rate")
    assert refusal["diff"] == 0.0 and refusal["inside"] and refusal["ci"][1] < 0.02
    # the interval is the confidence sequence of the per-user sums: recompute it from its formula
    n_refused = len(refused)
    r = n_refused / 4500
    per_arm = (n_refused * (1 - 3 * r) ** 2 + (1500 - n_refused) * (3 * r) ** 2) / 4500**2 * 1500 / 1499
    k = 3  # guardrails with data: refusal, re-ask and error rates (nothing rated, no verifier)
    alpha, t, t_opt = 0.05 / k, 3000, 1000 / 0.5
    x = -float(np.real(__import__("scipy.special").special.lambertw(-(alpha**2) / math.e, k=-1)))
    rho2 = (x - 1) / t_opt
    half = math.sqrt(2 * per_arm * 2 * (t * rho2 + 1) / (t * rho2) * math.log(math.sqrt(t * rho2 + 1) / alpha))
    assert refusal["ci"] == [pytest.approx(-half), pytest.approx(half)]
    assert out["interval_level"] == pytest.approx(1 - 0.05 / 3)
    code, _, table = _ab(str(logs), "--expected-share", "0.5", "-w", str(tmp_path / "ws"))
    assert code == 0 and "decision **ADVANCE**" in table
    assert f"| refusal_rate | {r:.2%} | {r:.2%} | +0.00 pts | [{-half * 100:+.2f} pts, {half * 100:+.2f} pts] | 2.00 pts | inside |" in table


def test_flywheel_ab_halts_on_a_sample_ratio_mismatch(tmp_path: Path) -> None:
    logs = _write(tmp_path / "logs" / "srm.jsonl",
                  _records("champion", 700, refusals_per_user={}) + _records("canary", 300, first_user=700, refusals_per_user={}))
    code, out, _ = _ab(str(logs), "--expected-share", "0.5", "-w", str(tmp_path / "ws"), "--json")
    assert code == 1 and out["srm"] and out["decision"] == "halt" and out["srm_p"] < 1e-20
    assert out["observed_share"] == pytest.approx(0.3)
    code, out, _ = _ab(str(logs), "--expected-share", "0.3", "-w", str(tmp_path / "ws"), "--json")
    assert not out["srm"] and out["decision"] == "hold"  # 300 per arm is below ramp.min_users_per_arm


def test_flywheel_ab_needs_the_share(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ab", str(tmp_path), "--json"])
    assert result.exit_code == 2 and "--expected-share" in result.output
    result = runner.invoke(app, ["ab", "--help"])
    assert result.exit_code == 0 and "--expected-share" in result.output and "--since" in result.output


def test_unsupported_answers_plug_in_and_stop_a_canary_that_refuses_less_but_makes_up_more() -> None:
    champion = _records("champion", 400, refusals_per_user={u: 1 for u in range(80)})
    canary = _records("canary", 400, first_user=400, refusals_per_user={})  # refuses less ...
    table = _table(champion + canary)
    # ... but the verifier finds 40% of its answers unsupported, against 5% of the champion's
    verdicts = [r["user_id"] < "user-0020" if r["metadata"]["variant"] == "champion" else int(r["user_id"][5:]) % 5 < 2
                for r in champion + canary]
    settings = load_settings(None, {"ramp.min_users_per_arm": 300})
    result = analyse_ab(table, settings, 0.5, unsupported=verdicts)
    metrics = {m["metric"]: m for m in result["metrics"]}
    assert metrics["refusal_rate"]["diff"] < 0
    assert metrics["unsupported_rate"]["guardrail"] and metrics["unsupported_rate"]["breached"]
    assert result["decision"] == "halt"
    # a callable over the table works the same; a verdict count that does not match is an error
    assert analyse_ab(table, settings, 0.5, unsupported=lambda t: verdicts)["decision"] == "halt"
    with pytest.raises(ValueError, match="one per record"):
        analyse_ab(table, settings, 0.5, unsupported=verdicts[:-1])
    assert analyse_ab(table, settings, 0.5)["decision"] != "halt"  # without the verifier it would pass by


def test_ab_counts_refusals_and_reasks_as_monitoring_does() -> None:
    records = []
    for arm, version, users in (("champion", "1", range(0, 60)), ("canary", "2", range(60, 120))):
        for u in users:
            t0 = START + timedelta(minutes=3 * u)
            refused = u % 3 == 0
            records.append({"request_id": f"{u}-a", "ts": t0.isoformat(), "user_id": f"u{u}", "prompt": "how do I pair my headphones?",
                            "response": REFUSAL if refused else ANSWER, "model_version": version, "latency_ms": 500.0,
                            "feedback": None, "metadata": {"variant": arm}})
            if refused or u % 7 == 0:  # a quick second message: a re-ask after a refusal, else a new topic
                records.append({"request_id": f"{u}-b", "ts": (t0 + timedelta(seconds=8)).isoformat(), "user_id": f"u{u}",
                                "prompt": "pair headphones how?" if refused else "what are your opening hours?",
                                "response": ANSWER, "model_version": version, "latency_ms": 500.0, "feedback": None,
                                "metadata": {"variant": arm}})
    records.append({"request_id": "old", "ts": START.isoformat(), "user_id": "u999", "prompt": "hi", "response": ANSWER,
                    "model_version": "1", "latency_ms": 1.0, "feedback": None, "metadata": {}})
    table = _table(records)
    settings = Settings()
    ab = analyse_ab(table, settings, 0.5)
    monitoring = compute_signals(table.filter(pa.array([r["request_id"] != "old" for r in records])), settings.signals)
    for arm, version in (("champion", "1"), ("canary", "2")):
        for rate in ("refusal_rate", "reask_rate"):
            assert ab["variants"][arm][rate] == pytest.approx(monitoring["by_model_version"][version][rate])
    assert ab["variants"]["champion"]["reask_rate"] > 0
    assert ab["unassigned_records"] == 1 and any("no metadata.variant" in r for r in ab["reasons"])


def test_abtest_and_ramp_settings_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("abtest:\n  margins: {refusals: 0.02}\nramp:\n  steps: [0.5, 0.25]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(bad)
    assert "abtest.margins" in str(err.value) and "unknown metric" in str(err.value)
    assert "ramp.steps" in str(err.value) and "increasing" in str(err.value)
