"""Where the embarrassingly parallel work runs (the `runner` section): with `kind: dask`, Prefect tasks
on prefect-dask's DaskTaskRunner, one task run per PII masking shard, monitoring partition or
evaluation generation shard, so the Prefect UI shows each; with `kind: local`, this machine's own way
(tasks.pii's process pool, partitions one after another, evaluation batches in this process).

The Dask cluster is `runner.address` (an existing scheduler: its workers need this package installed
and, for monitoring and evaluation, the workspace and models on a shared path) or a local cluster of `runner.workers` processes
started for the work and stopped after it. Only plain lists, settings and file paths travel to the
workers; task results are not persisted (they hold masked text, or answers that may repeat a prompt's
personal data), and a task run's parameters never reach the Prefect API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import RunnerSettings

T = TypeVar("T")


@contextmanager
def dask_task_runner(runner: RunnerSettings) -> Iterator[Any]:
    """A started DaskTaskRunner for the settings: the scheduler at `address`, else a local cluster of
    `workers` single-threaded processes (the shards hold the GIL: threads would not run them in parallel).

    The local cluster's workers run without Dask's statistical profiler. It samples every thread each
    10 ms for a dashboard this cluster does not serve, and each sample needs the GIL: with a worker on
    every core, 2 workers masked PII 8-15% slower with it (README, "Scaling out"). An existing cluster
    keeps its own configuration."""
    try:
        import dask
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError("runner.kind dask needs the dask extra: pip install 'llm-flywheel[dask]'") from None
    if runner.address:
        with DaskTaskRunner(address=runner.address) as task_runner:
            yield task_runner
        return
    cluster = {"n_workers": runner.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    with dask.config.set({"distributed.worker.profile.enabled": False}), \
            DaskTaskRunner(cluster_kwargs=cluster) as task_runner:
        yield task_runner


@task(name="pii-shard", cache_policy=NO_CACHE, persist_result=False)
def pii_shard(fn: Callable[..., Any], shard_fn: Callable[..., Any], shard: list[str], rest: list[Any]) -> Any:
    """One shard: `fn(shard_fn, shard, *rest)` (tasks.pii.pool.timed_shard around mask_shard/analyze_shard)."""
    return fn(shard_fn, shard, *rest)


@task(name="monitoring-partition", cache_policy=NO_CACHE, persist_result=False)
def monitoring_partition(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def _map_in_order(runner: Any, work: Any, parameters: dict[str, Any]) -> list[Any]:
    futures = runner.map(work, parameters)
    return [future.result() for future in futures]


class DaskShards:
    """A tasks.pii.pool.ShardMapper: every shard a `pii-shard` task run on the Dask cluster; every
    worker builds its engines before the first shard (as the process pool's workers do)."""

    def __init__(self, runner: Any, workers: int):
        self.runner = runner
        self.workers = workers

    def warm(self, settings_json: str, key: bytes) -> None:
        from tasks.pii.pool import warm

        self.runner.client.run(warm, settings_json, key)

    def __call__(self, fn: Callable[..., Any], *columns: list[Any]) -> list[Any]:
        from prefect.utilities.annotations import unmapped

        shard_fns, shards, *rest = columns
        return _map_in_order(self.runner, pii_shard, {"fn": unmapped(fn), "shard_fn": list(shard_fns),
                                                      "shard": list(shards), "rest": [list(r) for r in zip(*rest)]})


@contextmanager
def _on_dask(runner: RunnerSettings, make: Callable[[Any, int], T]) -> Iterator[T | None]:
    """None for runner.kind local (the caller's own way), else `make(task_runner, workers)` for a started
    DaskTaskRunner and its worker count, stopped on exit."""
    if runner.kind != "dask":
        yield None
        return
    with dask_task_runner(runner) as task_runner:
        yield make(task_runner, _worker_count(task_runner, runner))


def shard_mapper(runner: RunnerSettings) -> AbstractContextManager[DaskShards | None]:
    """The PII shard mapper of the settings: None for local (the process pool), else Dask's."""
    return _on_dask(runner, DaskShards)


def _partition_map(task_runner: Any, _workers: int) -> Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]:
    from prefect.utilities.annotations import unmapped

    return lambda fn, items: _map_in_order(task_runner, monitoring_partition, {"fn": unmapped(fn), "item": list(items)})


def partition_mapper(runner: RunnerSettings) -> AbstractContextManager[Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]] | None]:
    """`map(fn, items)` over monitoring partitions: None for local (one after another, here), else
    a `monitoring-partition` task run per item on Dask, results in order."""
    return _on_dask(runner, _partition_map)


@task(name="evaluation-shard", cache_policy=NO_CACHE, persist_result=False, task_run_name="evaluation-shard {item.label}")
def evaluation_shard(fn: Callable[[Any], Any], item: Any) -> Any:
    """One shard of evaluation answers: `fn(item)` (tasks.evaluate.answers.answer_shard); named by the
    shard's label (model, suite, number), never by its prompts."""
    return fn(item)


class DaskEvaluationShards:
    """A tasks.evaluate.answers.ShardMap: `warm` runs on every worker of the cluster (each loads the
    model once), `map` makes an `evaluation-shard` task run per item, results in order."""

    def __init__(self, runner: Any, workers: int):
        self.runner = runner
        self.workers = workers

    def warm(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.runner.client.run(fn, arg)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        from prefect.utilities.annotations import unmapped

        return _map_in_order(self.runner, evaluation_shard, {"fn": unmapped(fn), "item": list(items)})


def evaluation_shards(runner: RunnerSettings) -> AbstractContextManager[DaskEvaluationShards | None]:
    """The evaluation shard map of the settings: None for local (batches in this process), else Dask's."""
    return _on_dask(runner, DaskEvaluationShards)


def _worker_count(task_runner: Any, runner: RunnerSettings) -> int:
    """The cluster's workers: those the scheduler at runner.address knows, else the local cluster's."""
    if not runner.address:
        return runner.workers
    return len(task_runner.client.scheduler_info(n_workers=-1)["workers"])
