"""Always-valid statistics of the canary A/B test (DESIGN.md section 15): ratio metrics clustered by
user, asymptotic confidence sequences for canary - champion, the sample-ratio-mismatch test and the
advance / hold / halt rule. Everything takes numpy arrays of any shape, so the same functions judge
one look of `flywheel ab` and every look of every simulated run in `benchmarks/ab_calibration.py`.

Ratio metrics, users as the unit
    A metric is a ratio of sums over the users of an arm, R = sum(y) / sum(d): refusals per request,
    thumbs-down per rated request, ... A user sends several requests, so requests are not independent;
    users are (they were randomised). The variance of R is the delta-method (cluster-robust) one:

        Var(R) = n/(n-1) * sum_i (y_i - R d_i)^2 / (sum_i d_i)^2

    computed from five running sums per arm (`ArmSums`: n, y, d, yy, dd, yd), so adding requests
    never needs the raw rows again. The difference canary - champion has Var = Var_c + Var_h (the
    arms hold different users).

Always-valid intervals: asymptotic confidence sequences (Waudby-Smith, Arbour, Sinha, Kennedy and
Ramdas, "Time-uniform central limit theory and asymptotic confidence sequences", 2021; the two-sided
normal-mixture boundary of Howard, Ramdas, McAuliffe and Sekhon 2021). With t users in both arms
together and V the variance of the difference estimate, the interval

        diff +- sqrt( V * 2 (t rho^2 + 1) / (t rho^2) * log( sqrt(t rho^2 + 1) / alpha ) )

covers the true difference at every t at once with probability >= 1 - alpha (asymptotically): one may
look after every hour, or every request, and stop whenever, without inflating false alarms. (It is
the CS of the mean of the users' inverse-propensity pseudo-outcomes, whose variance is t * V.) rho
sets where the sequence is narrowest: rho^2 = (-W_{-1}(-alpha^2 / e) - 1) / t_opt (W: Lambert's W)
minimises the width at t_opt users; `flywheel ab` takes t_opt = the users at which the smaller arm
reaches `ramp.min_users_per_arm`, the first moment an advance is possible. A fixed-horizon interval
(diff +- z sqrt(V)) is narrower at any single look but, looked at hourly for a week, excludes the
truth in far more than alpha of A/A runs (`benchmarks/ab_calibration.py` measures both).

    The guarantee is for a stream of independent users; a user who comes back adds requests to a unit
    already counted, which the theory does not cover exactly. The calibration benchmark checks the
    false-alarm rate on such traffic.

Sample-ratio mismatch: Pearson's chi-square (1 degree of freedom) of the users per arm against the
expected share; p < `abtest.srm_p` (0.0005, as Microsoft's ExP) means the split itself is broken, and
no metric of that step can be trusted.

Decision, per look: `halt` on a sample-ratio mismatch or when any guardrail's interval lies wholly
above its margin (the canary is worse by more than allowed); `advance` when every guardrail's interval
lies wholly below its margin and both arms have `min_users_per_arm`; `hold` otherwise. Breaches are
judged only once both arms have `min_users_to_decide` users: below that the large-sample
approximations (variance estimate, chi-square) are not to be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import lambertw
from scipy.stats import chi2

HOLD, ADVANCE, HALT = 0, 1, 2
DECISIONS = ("hold", "advance", "halt")


@dataclass(frozen=True)
class ArmSums:
    """Sufficient statistics of a ratio metric sum(y) / sum(d) over the users of one arm: the number
    of users and the sums of y, d, y^2, d^2 and y*d over users (y, d: one user's totals). Fields are
    floats or arrays of one shape (e.g. runs x looks)."""

    n: np.ndarray | float
    y: np.ndarray | float
    d: np.ndarray | float
    yy: np.ndarray | float
    dd: np.ndarray | float
    yd: np.ndarray | float

    @classmethod
    def of_users(cls, y: np.ndarray, d: np.ndarray) -> ArmSums:
        """The sums over one arm's users, from per-user totals y and d."""
        y = np.asarray(y, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        return cls(float(len(y)), y.sum(), d.sum(), (y * y).sum(), (d * d).sum(), (y * d).sum())


def ratio_and_variance(arm: ArmSums) -> tuple[np.ndarray, np.ndarray]:
    """R = y / d and its delta-method variance with users as clusters; NaN where d == 0 or n < 2."""
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.asarray(arm.d, dtype=np.float64)
        n = np.asarray(arm.n, dtype=np.float64)
        ratio = np.where(d > 0, arm.y / d, np.nan)
        residual = arm.yy - 2.0 * ratio * arm.yd + ratio * ratio * arm.dd  # sum_i (y_i - R d_i)^2
        variance = np.where((d > 0) & (n > 1), np.maximum(residual, 0.0) / (d * d) * n / (n - 1), np.nan)
    return ratio, variance


def difference(canary: ArmSums, champion: ArmSums) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(canary ratio, champion ratio, canary - champion, variance of the difference)."""
    r_c, v_c = ratio_and_variance(canary)
    r_h, v_h = ratio_and_variance(champion)
    return r_c, r_h, r_c - r_h, v_c + v_h


def best_rho2(alpha: float, t_opt: float) -> float:
    """The mixture parameter rho^2 that makes the confidence sequence narrowest at t_opt users."""
    x = -lambertw(-(alpha**2) / np.e, k=-1).real  # the root x > 1 of log(x / alpha^2) = x - 1
    return float((x - 1.0) / max(float(t_opt), 1.0))


def confidence_sequence(
    diff: np.ndarray, variance: np.ndarray, t: np.ndarray, alpha: float, t_opt: float
) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided (1 - alpha) asymptotic confidence sequence of a difference at t users in all
    (formula in the module docstring). NaN where the difference or its variance is unknown."""
    rho2 = best_rho2(alpha, t_opt)
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = t * rho2 + 1.0
        scale = 2.0 * x / (t * rho2) * np.log(np.sqrt(x) / alpha)
        half = np.sqrt(variance * scale)
        half = np.where(t > 0, half, np.nan)
    return diff - half, diff + half


def srm_pvalue(canary_users: np.ndarray, champion_users: np.ndarray, share: float) -> np.ndarray:
    """Chi-square p-value (1 df) of the users per arm against the expected canary share. A share of
    0 or 1 expects one arm to be empty: p is 0 when it is not, 1 when it is."""
    canary = np.asarray(canary_users, dtype=np.float64)
    champion = np.asarray(champion_users, dtype=np.float64)
    total = canary + champion
    if share <= 0.0 or share >= 1.0:
        wrong = champion if share >= 1.0 else canary
        return np.where(wrong > 0, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_c = total * share
        expected_h = total * (1.0 - share)
        stat = (canary - expected_c) ** 2 / expected_c + (champion - expected_h) ** 2 / expected_h
        p = chi2.sf(stat, df=1)
    return np.where(total > 0, p, 1.0)


def srm_flag(
    canary_users: np.ndarray, champion_users: np.ndarray, share: float, *, p_threshold: float, min_users: int
) -> tuple[np.ndarray, np.ndarray]:
    """(p-value, mismatch?) The test speaks once each arm *expects* `min_users` users (counting what
    it expects, not what it got: an arm starved by a bug must still be caught); a share of 0 or 1
    flags any user in the arm that should be empty."""
    p = srm_pvalue(canary_users, champion_users, share)
    total = np.asarray(canary_users, dtype=np.float64) + np.asarray(champion_users, dtype=np.float64)
    if 0.0 < share < 1.0:
        enough = total * min(share, 1.0 - share) >= min_users
    else:
        enough = np.ones_like(total, dtype=bool)
    return p, enough & (p < p_threshold)


def decide(
    lo: np.ndarray,
    hi: np.ndarray,
    margins: np.ndarray,
    canary_users: np.ndarray,
    champion_users: np.ndarray,
    srm: np.ndarray,
    *,
    min_users_to_decide: int,
    min_users_per_arm: int,
) -> np.ndarray:
    """HOLD / ADVANCE / HALT per look. lo, hi: (..., k) intervals of the k guardrails' differences
    (canary - champion, higher is worse); margins: (k,). An unknown (NaN) interval is neither a breach
    nor inside its margin, so it can only hold."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    margins = np.asarray(margins, dtype=np.float64)
    fewest = np.minimum(canary_users, champion_users)
    breached = (lo > margins).any(axis=-1)  # NaN compares False
    inside = (hi < margins).all(axis=-1)
    judged = fewest >= min_users_to_decide
    halt = np.asarray(srm, dtype=bool) | (judged & breached)
    advance = ~halt & judged & (fewest >= min_users_per_arm) & inside
    return np.where(halt, HALT, np.where(advance, ADVANCE, HOLD))
