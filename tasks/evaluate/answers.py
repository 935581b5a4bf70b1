"""How evaluation gets its answers: greedy, in batches of model.batch_size cut per suite, either here
(`answer_all`) or in shards of whole batches on other workers (`ShardedGenerator`, runner.kind dask).

Batched generation can depend on which prompts share a batch (padding, and the kernels' float
reductions), so both paths generate the very same batches: a suite's batches start at its first item
and hold at most model.batch_size items, and a shard is a run of whole batches of one suite. Each
worker builds its generator (base + adapters) once (`loaded_generator`) with the thread count this
process would use, so the merged answers equal the local ones, in the same order.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.base_model import resolve_base_model
from tasks.config import Settings
from tasks.contracts import Generator
from tasks.generation import make_generator
from tasks.served import AdapterView

Batch = tuple[int, int]  # [start, stop) in the item list


def suite_batches(suites: Sequence[str], batch_size: int) -> list[Batch]:
    """The batches evaluation generates in: consecutive items of one suite, at most `batch_size` of them,
    each suite's first batch starting at its first item (so a suite's answers do not depend on how
    many items the suites before it hold)."""
    batches: list[Batch] = []
    start = 0
    for stop in range(1, len(suites) + 1):
        if stop == len(suites) or suites[stop] != suites[start] or stop - start == batch_size:
            batches.append((start, stop))
            start = stop
    return batches


def suite_shards(batches: Sequence[Batch], suites: Sequence[str], workers: int) -> list[list[Batch]]:
    """Runs of whole batches of one suite, about two per worker overall (a suite never shares a shard)."""
    per_shard = max(1, math.ceil(len(batches) / (2 * workers)))
    shards: list[list[Batch]] = []
    for batch in batches:
        last = shards[-1] if shards else None
        if last and len(last) < per_shard and suites[last[0][0]] == suites[batch[0]]:
            last.append(batch)
        else:
            shards.append([batch])
    return shards


def answer_all(generator: Generator | ShardedGenerator, prompts: Sequence[str], settings: Settings, *,
               seed: int = 0, batches: Sequence[Batch] | None = None) -> list[str]:
    """One greedy answer per prompt, generated in `batches` (default: consecutive runs of
    model.batch_size); a ShardedGenerator answers them on its workers, with the same batches."""
    if batches is None:
        batches = suite_batches([""] * len(prompts), settings.model.batch_size)
    if isinstance(generator, ShardedGenerator):
        return generator.answer(prompts, batches, seed=seed)
    out: list[str] = []
    for start, stop in batches:
        chunk = list(prompts[start:stop])
        got = generator.generate(chunk, n=1, temperature=0.0, max_new_tokens=settings.model.max_new_tokens, seed=seed)
        if len(got) != len(chunk):
            raise ValueError(f"generator {generator.model_version!r} returned {len(got)} answers for {len(chunk)} prompts")
        out.extend(answers[0] if answers else "" for answers in got)
    return out


# --------------------------------------------------------------------------------------------------
# Shards on workers


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads: the generator `make_generator(settings, adapters)` builds."""

    settings: Settings
    adapters: dict[str, str]  # name -> adapter folder

    def key(self) -> str:
        return json.dumps([self.settings.model_dump_json(), self.adapters])


@dataclass(frozen=True)
class Shard:
    """One `evaluation-shard`: `prompts` answered by `adapter` (None: the bare base) in `batches`
    (relative to `prompts`). `label` names it in the Prefect UI and holds no text of the items."""

    spec: ModelSpec
    adapter: str | None
    prompts: list[str]
    batches: list[Batch]
    seed: int
    label: str


_LOADED: dict[str, Any] = {}  # ModelSpec.key() -> generator; one model per worker process
_LOADED_LOCK = threading.Lock()


def loaded_generator(spec: ModelSpec) -> Any:
    """This process's generator for `spec`, built on first use; another spec replaces it (one model in
    memory per worker)."""
    key = spec.key()
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED.clear()
            _LOADED[key] = make_generator(spec.settings, {name: Path(path) for name, path in spec.adapters.items()})
        return _LOADED[key]


def warm(spec: ModelSpec) -> None:
    """Load `spec`'s generator in this process now (a worker before its first shard)."""
    loaded_generator(spec)


def answer_shard(shard: Shard) -> list[str]:
    """The answers of one shard, on whichever worker runs it."""
    view = AdapterView(loaded_generator(shard.spec), shard.adapter)
    return answer_all(view, shard.prompts, shard.spec.settings, seed=shard.seed, batches=shard.batches)


class ShardMap(Protocol):
    """Where shards run (flows/parallel.py's `evaluation_shards`): `warm(fn, arg)` once on every worker,
    `map(fn, items)` one task per item, results in order."""

    workers: int

    def warm(self, fn: Callable[[Any], Any], arg: Any) -> None: ...

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]: ...


class ShardedGenerator:
    """One model of `spec` (`adapter`; None: the bare base) answering on the workers of `shard_map`, in
    shards of whole batches (`suite_shards`): the answers `answer_all` gives here, in the same order."""

    def __init__(self, spec: ModelSpec, adapter: str | None, model_version: str, shard_map: ShardMap,
                 suites: Sequence[str]) -> None:
        self.spec = spec
        self.adapter = adapter
        self.model_version = model_version
        self.shard_map = shard_map
        self.suites = list(suites)

    def answer(self, prompts: Sequence[str], batches: Sequence[Batch], *, seed: int) -> list[str]:
        if len(prompts) != len(self.suites):
            raise ValueError(f"{len(prompts)} prompts for {len(self.suites)} items: shard the items evaluated")
        shards = []
        planned = suite_shards(batches, self.suites, self.shard_map.workers)
        for number, run in enumerate(planned, 1):
            start, stop = run[0][0], run[-1][1]
            shards.append(Shard(self.spec, self.adapter, list(prompts[start:stop]), [(a - start, b - start) for a, b in run],
                                seed, f"{self.model_version} {self.suites[start]} {number}/{len(planned)}"))
        return [answer for got in self.shard_map.map(answer_shard, shards) for answer in got]


def worker_spec(settings: Settings, adapters: dict[str, Path]) -> ModelSpec:
    """The spec of the generator `make_generator(settings, adapters)` builds here, with the torch CPU
    thread count pinned to this process's (float reductions depend on it, so answers would too) and the
    base model as an absolute path (a worker's working directory may be another)."""
    import torch

    model = {"cpu_threads": settings.model.cpu_threads or torch.get_num_threads(),
             "base": str(resolve_base_model(settings).resolve())}
    pinned = settings.model_copy(update={"model": settings.model.model_copy(update=model)})
    return ModelSpec(pinned, {name: str(path) for name, path in adapters.items()})
