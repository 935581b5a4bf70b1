"""Dynamic batching for the local backend: concurrent requests share one generate call.

One worker thread owns the model (LocalGenerator switches its active adapter per call, so nothing else
may touch it). It takes the first waiting request, waits up to serving.max_wait_ms for more (and takes
whatever is already queued without waiting), up to serving.max_batch_size, then generates once per
group of requests with the same adapter and sampling settings: one adapter per micro-batch. A group
whose call fails is retried one request at a time, so a single bad request fails alone.

Unloads, and the loads that change the model's layers (the first adapter on the bare base), run on the
same thread between batches (`run`): no batch is ever generating while peft changes its layers. A load
that only adds an adapter to the LoRA layers the model has runs in the loading thread beside the batches
(LocalGenerator.load_beside_generation and its lock): a swap does not wait for the batch in progress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tasks.base_model import format_prompt

from serving.metrics import Metrics

log = logging.getLogger("flywheel.serving")
_STOP = object()


@dataclass(frozen=True)
class Params:
    """How to answer one request."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    template: bool = True  # False: continue the prompt as given (/v1/completions)
    stops: tuple[str, ...] = ()

    @property
    def group(self) -> tuple:
        """Requests that may share a generate call (stop strings are applied afterwards, per request)."""
        return (self.template, self.temperature, self.max_tokens, self.top_p, self.seed)


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str  # "stop" | "length"


class GenerationError(RuntimeError):
    """Generating an answer failed; the request is answered 500 and the server goes on."""


@dataclass
class _Job:
    prompt: str
    adapter: str | None
    params: Params
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Batcher:
    """The worker thread in front of one LocalGenerator."""

    def __init__(self, generator: Any, metrics: Metrics, *, max_batch: int, max_wait_s: float) -> None:
        self.generator = generator
        self.metrics = metrics
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s) if self.max_batch > 1 else 0.0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Answer everything queued, then end the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)

    async def complete(self, prompt: str, adapter: str | None, params: Params) -> Completion:
        loop = asyncio.get_running_loop()
        job = _Job(prompt, adapter, params, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def run(self, task: Callable[[Any], Any]) -> concurrent.futures.Future:
        """Run task(generator) on the worker thread between batches (unloads, loads that change layers)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((task, future))
        return future

    # --------------------------------------------------------------------------- the worker

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, tuple):
                self._run_task(*item)
                continue
            batch, after = self._collect(item)
            self._answer(batch)
            for other in after:
                if other is _STOP:
                    return
                self._run_task(*other)

    def _collect(self, first: _Job) -> tuple[list[_Job], list]:
        """The batch that starts with `first`, and any task or stop met while collecting it (run after)."""
        batch, after = [first], []
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Job):
                batch.append(item)
            else:
                after.append(item)
                break
        return batch, after

    def _answer(self, batch: list[_Job]) -> None:
        self.metrics.batch_size.observe(len(batch))
        groups: dict[tuple, list[_Job]] = {}
        for job in batch:
            groups.setdefault((job.adapter, job.params.group), []).append(job)
        for jobs in groups.values():
            try:
                self._settle(jobs, self._generate(jobs))
            except Exception as err:
                if len(jobs) == 1:
                    log.exception("generation failed (adapter %s)", jobs[0].adapter)
                    self._fail(jobs[0], err)
                    continue
                for job in jobs:  # find the one that fails; the others are answered
                    try:
                        self._settle([job], self._generate([job]))
                    except Exception as single:
                        log.exception("generation failed (adapter %s)", job.adapter)
                        self._fail(job, single)

    def _generate(self, jobs: list[_Job]) -> list[Completion]:
        params = jobs[0].params
        generator = self.generator
        generator.use(jobs[0].adapter)
        prompts = [job.prompt for job in jobs]
        answers = generator.generate(prompts, temperature=params.temperature, max_new_tokens=params.max_tokens,
                                     top_p=params.top_p, seed=params.seed, template=params.template)
        texts = [_cut(answer[0], job.params.stops) for answer, job in zip(answers, jobs)]
        shown = [format_prompt(p) if params.template else p for p in prompts]
        counted = generator.tokenizer(shown + texts, add_special_tokens=False)["input_ids"]
        prompt_tokens, completion_tokens = counted[:len(jobs)], counted[len(jobs):]
        return [Completion(text, len(p), len(c), "length" if len(c) >= params.max_tokens else "stop")
                for text, p, c in zip(texts, prompt_tokens, completion_tokens)]

    def _settle(self, jobs: list[_Job], completions: list[Completion]) -> None:
        for job, completion in zip(jobs, completions):
            job.loop.call_soon_threadsafe(_set_result, job.future, completion)

    def _fail(self, job: _Job, err: Exception) -> None:
        error = GenerationError(f"{type(err).__name__}: {err}")
        job.loop.call_soon_threadsafe(_set_exception, job.future, error)

    def _run_task(self, task: Callable[[Any], Any], future: concurrent.futures.Future) -> None:
        try:
            future.set_result(task(self.generator))
        except Exception as err:
            future.set_exception(err)


def _cut(text: str, stops: tuple[str, ...]) -> str:
    """`text` up to the first stop string."""
    ends = [text.find(stop) for stop in stops if stop in text]
    return text[:min(ends)] if ends else text


def _set_result(future: asyncio.Future, value: Completion) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(value)


def _set_exception(future: asyncio.Future, error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
