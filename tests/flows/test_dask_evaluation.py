"""runner.kind dask for the retraining flow's evaluation stage (flows/parallel.py, tasks/evaluate/answers.py):
the answers are generated in per-suite shards of whole batches, each an `evaluation-shard` task run on a
real 2-worker Dask cluster under the Prefect test harness, and the stage writes what the local runner
writes, byte for byte; on the tiny test base with two random adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow
from prefect.context import get_run_context

from flows.retraining import EVALUATE_SECTIONS, evaluate_candidate, stage_settings
from tasks.base_model import model_digest
from tasks.config import SHIPPED_DATA, load_settings
from tasks.evaluate import suite_batches
from tests.flows.test_dask_runner import _task_run_names
from tests.test_models import _random_adapter

pytestmark = pytest.mark.slow
SUITES = {"regression": 5, "ood": 3}  # items per suite; batches of 2: 3 + 2 batches


@pytest.fixture(scope="module")
def dask_address():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def test_evaluation_shards_on_dask_write_the_local_runners_outputs(tiny_base_model: Path, tmp_path: Path,
                                                                   dask_address: str) -> None:
    workspace = tmp_path / "ws"
    (workspace / "eval").mkdir(parents=True)
    for suite, count in SUITES.items():  # small suites in the workspace (the shipped ones are not copied over them)
        lines = (SHIPPED_DATA / "eval" / f"{suite}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
        (workspace / "eval" / f"{suite}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    candidate = _random_adapter(tiny_base_model, tmp_path / "cand" / "05_adapter", seed=1)
    champion = _random_adapter(tiny_base_model, tmp_path / "champ", seed=2)
    values = {"paths.workspace": str(workspace), "model.base": str(tiny_base_model), "model.max_new_tokens": 8,
              "model.batch_size": 2, "evaluate.suites": list(SUITES), "evaluate.bootstrap_samples": 100}
    local = stage_settings(load_settings(None, values), EVALUATE_SECTIONS)
    dask = stage_settings(load_settings(None, values | {"runner.kind": "dask", "runner.address": dask_address}),
                          EVALUATE_SECTIONS)
    weights = candidate / "adapter_model.safetensors"
    base = f"base@{model_digest(tiny_base_model)[:12]}"  # the champion before the first promotion

    @flow(name="evaluate-on-dask")
    def evaluate_both():
        for settings, runner in ((local, "local"), (dask, "dask")):
            # against the registered champion; and in the first cycle, against the bare base
            evaluate_candidate(settings, weights, None, ("3", champion), tmp_path / runner / "06_eval", None)
            evaluate_candidate(settings, weights, None, None, tmp_path / runner / "first" / "06_eval", None)
        return get_run_context().flow_run.id

    flow_run_id = evaluate_both()
    for cycle in (Path(), Path("first")):
        out_local, out_dask = tmp_path / "local" / cycle / "06_eval", tmp_path / "dask" / cycle / "06_eval"
        for name in ("items.jsonl", "report.md"):
            assert (out_dask / name).read_bytes() == (out_local / name).read_bytes(), name
        reports = [json.loads((out / "report.json").read_text(encoding="utf-8")) for out in (out_local, out_dask)]
        gates = [json.loads((out / "gate.json").read_text(encoding="utf-8")) for out in (out_local, out_dask)]
        for report, gate in zip(reports, gates):  # all but when it ran and how long it took
            del report["created"], report["seconds"], report["gate"]["decided_at"], gate["decided_at"]
        assert reports[0] == reports[1] and gates[0] == gates[1]
        assert reports[0]["champion"] == ("v3" if cycle == Path() else base)
        rows = [json.loads(line) for line in (out_dask / "items.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [row["suite"] for row in rows] == ["regression"] * 5 + ["ood"] * 3
        assert any(row["candidate"]["response"] != row["champion"]["response"] for row in rows)  # two models answered

    # Per model: regression's 3 batches in 2 shards, ood's 2 batches in 1 (about two shards per worker).
    assert suite_batches([row["suite"] for row in rows], 2) == [(0, 2), (2, 4), (4, 5), (5, 7), (7, 8)]
    shards = sorted(name for name in _task_run_names(flow_run_id) if name.startswith("evaluation-shard"))
    models = ("05_adapter", "v3", "05_adapter", base)
    assert shards == sorted(f"evaluation-shard {model} {suite} {n}/3" for model in models
                            for suite, n in (("regression", 1), ("regression", 2), ("ood", 3)))

