"""runner.kind dask (flows/parallel.py): PII shards and monitoring partitions as Prefect task runs on a
Dask cluster (2 local worker processes, reached by runner.address) under the Prefect test harness, with
the local path's output; and a local cluster started from runner.workers."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import get_run_context

from flows.parallel import partition_mapper, shard_mapper
from tasks import pii
from tasks.config import DriftSettings, PiiSettings, RunnerSettings, SignalsSettings
from tasks.drift import compute_drift, prepare_reference
from tasks.partitions import partitioned_signals_and_drift, spill_partitions
from tasks.signals import compute_signals

pytestmark = pytest.mark.slow
KEY = b"dask-test-key-0123456789"
SETTINGS = PiiSettings(processes=1, batch_size=16)  # as tests/test_pii.py: this process's engines are built once
PEOPLE = ["Jane Doe", "Marco Rossi", "Aiko Tanaka", "Peter Miller"]


@pytest.fixture(scope="module")
def dask_address():
    """One cluster for the module (its workers build the PII engines once), reached by runner.address."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _task_run_names(flow_run_id) -> list[str]:
    async def read():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            return [run.name for run in runs]

    from prefect.utilities.asyncutils import run_coro_as_sync

    return run_coro_as_sync(read())


def test_pii_shards_on_dask_mask_byte_identically_and_each_shard_is_a_task_run(tmp_path, dask_address):
    rows = [{"prompt": f"I'm {PEOPLE[i % 4]}, mail me at user{i % 7}@example.org or call (415) 555-01{i % 10}0.",
             "response": "Thanks, noted." if i % 3 else f"Hello {PEOPLE[(i + 1) % 4]}!"} for i in range(40)]
    src = tmp_path / "cases.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    local = pii.mask_file(src, tmp_path / "local.jsonl", SETTINGS, key=KEY)

    @flow(name="mask-on-dask")
    def mask_on_dask() -> tuple[dict, str]:
        with shard_mapper(RunnerSettings(kind="dask", address=dask_address)) as mapper:
            audit = pii.mask_file(src, tmp_path / "dask.jsonl", SETTINGS, key=KEY, mapper=mapper)
        return audit, get_run_context().flow_run.id

    audit, flow_run_id = mask_on_dask()
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
    assert "Jane Doe" not in (tmp_path / "dask.jsonl").read_text() and audit["entities"] == local["entities"]
    assert audit["processes"] == 2
    shards = [name for name in _task_run_names(flow_run_id) if name.startswith("pii-shard")]
    per = max(SETTINGS.batch_size, math.ceil(audit["distinct_texts"] / (2 * 4)))  # 4 shards per worker
    assert len(shards) == math.ceil(audit["distinct_texts"] / per) > 2


def test_monitoring_partitions_on_dask_equal_the_in_memory_signals_and_drift(dask_address):
    from tests.test_partitions import REFERENCE, week

    table = week(11, 400)
    signals, drift = SignalsSettings(), DriftSettings(min_prompts=5, explain_min_prompts=2, vocab_size=10,
                                                      null_resamples=20)

    @flow(name="partitions-on-dask")
    def partitions_on_dask():
        with tempfile.TemporaryDirectory() as folder:
            spilled = spill_partitions(table.to_batches(max_chunksize=64), Path(folder), 4)
            with partition_mapper(RunnerSettings(kind="dask", address=dask_address)) as run:
                found = partitioned_signals_and_drift(spilled["paths"], spilled, signals, drift,
                                                      prepare_reference(REFERENCE, drift), seed=1, map_partitions=run)
        return found[:2], get_run_context().flow_run.id

    (got_signals, got_drift), flow_run_id = partitions_on_dask()
    assert got_signals == compute_signals(table, signals)
    assert got_drift == compute_drift(REFERENCE, table.column("prompt"), drift, seed=1)
    # 4 partitions for the statistics, then 4 for the drift examples
    assert sum(name.startswith("monitoring-partition") for name in _task_run_names(flow_run_id)) == 8


def test_without_an_address_a_local_cluster_runs_the_partitions_in_another_process_without_the_profiler():
    """The local cluster serves no dashboard, so its workers skip Dask's 10 ms profiler (it slowed the
    shards on busy cores); the flow process's own Dask configuration is as it was afterwards."""
    import dask

    def square(x: int) -> tuple[int, int, bool]:
        return x * x, os.getpid(), dask.config.get("distributed.worker.profile.enabled")

    @flow(name="local-cluster")
    def local_cluster() -> list[tuple[int, int, bool]]:
        with partition_mapper(RunnerSettings(kind="dask", workers=1)) as run:
            return run(square, [1, 2, 3])

    results = local_cluster()
    assert [result[0] for result in results] == [1, 4, 9]
    assert {pid for _, pid, _ in results} != {os.getpid()} and len({pid for _, pid, _ in results}) == 1
    assert [profiling for _, _, profiling in results] == [False] * 3
    assert dask.config.get("distributed.worker.profile.enabled") is True
