"""Shards: masking and analysis mapped over plain lists of texts by a pool of worker processes.

`mask_shard` and `analyze_shard` take a plain list of texts, the settings as JSON and the key, and
return plain dicts: the unit flows/parallel.py maps as Prefect tasks on Dask (runner.kind dask). Each process builds its
engines once (`cached_masker`) and warms them on made-up PII before its first shard. `ShardPool`
runs `pii.processes` spawned workers (or this process alone, for small inputs), hands each distinct
text to one of them once and gives every copy its result, in order. Workers die with the process
that started them, even when it is killed with SIGKILL (`_die_with_parent`).
"""

from __future__ import annotations

import hmac
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Protocol, Sequence

from tasks.config import PiiSettings
from tasks.pii.masker import Masker, build_masker

log = logging.getLogger(__package__)  # the package's logger: log lines keep the name "tasks.pii"

_MASKERS: dict[str, Masker] = {}  # settings JSON -> masker; engines are built once per process
_MASKERS_LOCK = threading.Lock()


def cached_masker(settings_json: str, key: bytes) -> Masker:
    """The masker of these settings, built once per process; under another key, a cheap copy."""
    with _MASKERS_LOCK:
        masker = _MASKERS.get(settings_json)
        if masker is None:
            masker = build_masker(PiiSettings.model_validate_json(settings_json), key)
            _MASKERS[settings_json] = masker
    return masker if hmac.compare_digest(masker.key, key) else masker.with_key(key)


def mask_shard(texts: list[str], settings_json: str, key: bytes, remask: bool = True) -> list[dict[str, Any]]:
    """Mask and verify one shard: per text {text, entities, error, leaks}.

    Plain lists in, plain dicts out, engines cached per process: a Dask or Ray task runner can map
    it over shards as it is."""
    masker = cached_masker(settings_json, key)
    return [
        {"text": o.text, "entities": o.entities, "error": o.error, "leaks": leaks}
        for o, leaks in masker.mask_verified(texts, remask=remask)
    ]


def analyze_shard(texts: list[str], settings_json: str, key: bytes) -> list[dict[str, Any]]:
    """Analyse and mask one shard; returns spans (for scoring) besides the masked text."""
    masker = cached_masker(settings_json, key)
    out: list[dict[str, Any]] = []
    for text, results in zip(texts, masker.analyze_texts(texts)):
        if isinstance(results, BaseException):
            out.append({"spans": None, "text": None, "error": type(results).__name__})
            continue
        try:
            masked = masker.anonymize(text, results)
        except Exception as err:  # noqa: BLE001
            out.append({"spans": None, "text": None, "error": type(err).__name__})
            continue
        spans = [(r.start, r.end, r.entity_type, round(r.score, 3)) for r in results]
        out.append({"spans": spans, "text": masked, "error": None})
    return out


# Made-up values of the usual kinds: analysing this once loads what the recognizers load on first
# use (phone metadata per region, the suffix list, spaCy's buffers), so no shard waits for it.
_WARM_UP_TEXT = (
    "Hi, I'm Jane Doe from Berlin. Call +49 30 901820 or (415) 555-0100, mail jane@example.org, "
    "card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, IP 10.0.0.1, 12 Main Street."
)


def _die_with_parent(parent: int) -> None:
    """Make this worker die when `parent` does, even by SIGKILL (which runs no clean-up there).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG), immediate even
    while this worker is busy in C code. Everywhere: a daemon thread that polls the parent pid,
    twice a second. Once the workers are gone, the multiprocessing resource tracker (whose pipe they
    held open) sees end-of-file and exits too; nothing is left to block a restart."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    if os.getppid() != parent:  # the parent died before this worker got here
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _start_worker(parent: int, settings_json: str, key: bytes) -> None:
    _die_with_parent(parent)
    warm(settings_json, key)


def warm(settings_json: str, key: bytes) -> None:
    """Build this process's engines and load what they load on first use."""
    cached_masker(settings_json, key).analyze_texts([_WARM_UP_TEXT])


def _pid(_: int) -> int:
    return os.getpid()


def timed_shard(fn: Callable[..., list[dict[str, Any]]], shard: list[str], *args: Any) -> tuple[float, list[dict[str, Any]]]:
    started = time.process_time()
    results = fn(shard, *args)
    return time.process_time() - started, results


class ShardMapper(Protocol):
    """Runs `timed_shard` over shards elsewhere (flows/parallel.py: Prefect tasks on Dask), in order."""

    workers: int

    def warm(self, settings_json: str, key: bytes) -> None: ...

    def __call__(self, fn: Callable[..., Any], *columns: list[Any]) -> list[tuple[float, list[dict[str, Any]]]]: ...


class ShardPool:
    """`processes` spawned workers, each building its engines once; maps a shard function in order.

    Runs in this process when `processes` is 1 or the input is too small to be worth a spawn. With a
    `mapper` (runner.kind dask), the shards run where it sends them, over `mapper.workers` workers.
    `cpu_seconds` adds up the CPU time the shards took, wherever they ran."""

    def __init__(self, settings: PiiSettings, key: bytes, *, size: int | None = None,
                 mapper: ShardMapper | None = None):
        self.settings_json = settings.model_dump_json()
        self.key = key
        self.batch_size = settings.batch_size
        self.mapper = mapper
        small = size is not None and size < 2 * settings.batch_size
        self.processes = mapper.workers if mapper is not None else 1 if small else settings.processes
        self.cpu_seconds = 0.0
        self.distinct_texts = 0  # texts handled, each distinct text once
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ShardPool:
        if self.mapper is not None:
            self.mapper.warm(self.settings_json, self.key)
        elif self.processes > 1:
            # Spawned, not forked: the caller may hold threads (Prefect) and locks. Every worker
            # builds its engines once, in its initializer; the first tasks wait for that.
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(os.getpid(), self.settings_json, self.key),
            )
            pids = list(self._pool.map(_pid, range(self.processes)))
            log.debug("PII workers ready: %d", len(set(pids)))
        else:
            warm(self.settings_json, self.key)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def shards(self, texts: Sequence[str]) -> list[list[str]]:
        """Plain lists of texts; several per worker keep all busy when shard costs differ."""
        n = len(texts)
        if n == 0:
            return []
        per = max(self.batch_size, math.ceil(n / (self.processes * 4)))
        return [list(texts[i : i + per]) for i in range(0, n, per)]

    def map(self, fn: Callable[..., list[dict[str, Any]]], texts: Sequence[str], *args: Any) -> list[dict[str, Any]]:
        """`fn` over `texts`, one result per text, in order. Each distinct text is handled once:
        logs repeat prompts and answers, and the same text always gets the same result (the
        analysis is deterministic and pseudonyms depend on the value and the key only)."""
        first: dict[str, int] = {}
        slots = [first.setdefault(text, len(first)) for text in texts]
        self.distinct_texts += len(first)
        shards = self.shards(list(first))
        n = len(shards)
        columns = [[fn] * n, shards, [self.settings_json] * n, [self.key] * n, *[[a] * n for a in args]]
        if self.mapper is not None:
            timed = self.mapper(timed_shard, *columns)
        elif self._pool is None:
            timed = [timed_shard(*call) for call in zip(*columns)]
        else:
            timed = list(self._pool.map(timed_shard, *columns))
        self.cpu_seconds += sum(cpu for cpu, _ in timed)
        results = [item for _, shard in timed for item in shard]
        return [dict(results[slot]) for slot in slots]
