"""Gates: the TFX-style blessing that decides whether a candidate may become the canary.

Gates come from configuration (`evaluate.gates`): an absolute floor and a maximum allowed drop against
the champion; with no champion (first cycle) floors only. The result is a decision object written beside
the report and recorded on the model version by the registry, never just a log line.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tasks.config import Gate
from tasks.evaluate.scoring import LOWER_IS_BETTER

_EPS = 1e-9


def check_gates(summary: dict, gates: dict[str, dict[str, Gate]], *, has_champion: bool) -> dict:
    """The blessing: every configured (suite, metric) gets a floor check and, when a champion exists, a
    max-drop check, each with its value, threshold and verdict. No champion (first cycle): floors only.

    A gated suite that was not evaluated fails ("no items"), except new_cases, which only exists inside
    a retraining cycle and is skipped (recorded as skipped) when absent.
    """
    checks: list[dict] = []
    for suite, metrics in gates.items():
        for metric, gate in metrics.items():
            gate = gate if isinstance(gate, Gate) else Gate.model_validate(gate)
            lower = metric in LOWER_IS_BETTER
            entry = (summary.get(suite) or {}).get(metric)
            base = {"suite": suite, "metric": metric, "direction": "lower_is_better" if lower else "higher_is_better"}
            if entry is None or entry.get("candidate") is None:
                if suite not in summary and suite == "new_cases":
                    checks.append({**base, "kind": "present", "value": None, "threshold": None, "passed": True,
                                   "skipped": True, "reason": "no new cases in this evaluation"})
                else:
                    why = "suite not evaluated (no items)" if suite not in summary else "metric does not apply to any item"
                    checks.append({**base, "kind": "present", "value": None, "threshold": None, "passed": False, "reason": why})
                continue
            value = entry["candidate"]
            if gate.floor is not None:
                ok = value <= gate.floor + _EPS if lower else value >= gate.floor - _EPS
                checks.append({**base, "kind": "ceiling" if lower else "floor", "value": value, "threshold": gate.floor,
                               "passed": bool(ok)})
            if gate.max_drop is not None and has_champion:
                diff = entry.get("diff")
                if diff is None:
                    checks.append({**base, "kind": "max_drop", "value": None, "threshold": gate.max_drop, "passed": False,
                                   "reason": "no champion score to compare with"})
                    continue
                ok = diff <= gate.max_drop + _EPS if lower else diff >= -gate.max_drop - _EPS
                checks.append({**base, "kind": "max_rise" if lower else "max_drop", "value": diff,
                               "threshold": gate.max_drop, "passed": bool(ok), "champion": entry.get("champion"),
                               "diff_ci": entry.get("diff_ci")})
    failed = [f"{c['suite']}.{c['metric']}.{c['kind']}" for c in checks if not c["passed"]]
    return {"passed": not failed, "first_cycle": not has_champion, "checks": checks, "failed": failed, "decided_at": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
