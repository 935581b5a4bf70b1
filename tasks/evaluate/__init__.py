"""Evaluation and gates (DESIGN.md section 9): candidate vs champion on the same items, TFX-style blessing.

* `suites`: the EvalItem suites (regression that grows every cycle, ood, adversarial, new_cases).
* `scoring`: per-item scores and the per-suite comparison with paired bootstrap intervals.
* `gates`: floors and maximum drops from `evaluate.gates`, as a decision object (gate.json).
* `answers`: the answers, in per-suite batches, here or in shards on workers (runner.kind dask).
* `stage`: the stage itself (`evaluate_candidate`, `evaluate_adapter`), writing 06_eval/ and logging it.

The report's markdown is rendered by tasks/report.py.
"""

from tasks.evaluate.answers import ShardedGenerator, answer_all, suite_batches
from tasks.evaluate.gates import check_gates
from tasks.evaluate.scoring import (
    LOWER_IS_BETTER,
    METRICS,
    add_faithfulness,
    detect_refusals,
    find_pii,
    score_item,
    score_responses,
    summarise,
)
from tasks.evaluate.stage import (
    GATE_FILE,
    evaluate_adapter,
    evaluate_candidate,
    evaluate_stage,
    log_to_mlflow,
    publish_prefect_artifact,
)
from tasks.evaluate.suites import (
    SUITE_FILES,
    grow_regression_suite,
    load_suites,
    read_new_cases,
    suite_path,
    workspace_suites,
)

__all__ = [
    "GATE_FILE",
    "LOWER_IS_BETTER",
    "METRICS",
    "SUITE_FILES",
    "ShardedGenerator",
    "add_faithfulness",
    "answer_all",
    "check_gates",
    "detect_refusals",
    "evaluate_adapter",
    "evaluate_candidate",
    "evaluate_stage",
    "find_pii",
    "grow_regression_suite",
    "load_suites",
    "log_to_mlflow",
    "publish_prefect_artifact",
    "read_new_cases",
    "score_item",
    "score_responses",
    "suite_batches",
    "suite_path",
    "summarise",
    "workspace_suites",
]
