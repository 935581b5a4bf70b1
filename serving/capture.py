"""Log capture: every answered request becomes one LogRecord in the workspace's daily log files, written
by a thread of its own so that no request waits for the disk.

* The request path puts the record on a bounded queue. When the queue is full the request waits for
  room (back-pressure) up to serving.capture_block_s, then is answered 503 instead of being answered
  without a record. Nothing is dropped silently: a record the writer cannot write after retries is
  counted in flywheel_capture_dropped_records_total (which must stay 0) and reported on stderr.
* The writer thread wakes every serving.capture_flush_s (or at once when the queue holds a full write
  batch, or is full) and appends everything queued through the log store's LogWriter: the same files,
  format and validation that `flywheel monitor` reads. It does not wake per record: a thread woken per
  answer costs the server context switches and GIL hand-overs on every request (measured: about 5 more
  context switches per answer), while one wake per interval costs nothing per request.
* `close()` (the server's graceful stop, SIGTERM) writes everything still queued before returning.
* Feedback (/feedback) travels the same queue and becomes a FeedbackEvent beside the logs, which the
  log store joins onto the record by request_id (tasks/logs/feedback.py). The ids of the latest
  serving.feedback_ids answers are remembered (seeded at start from today's and yesterday's files),
  so feedback on an unknown request id can be refused with 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tasks.contracts import FeedbackEvent, LogRecord
from tasks.logs import LogWriter

from serving.metrics import Metrics

log = logging.getLogger("flywheel.serving")

_RETRIES = (0.1, 0.5, 2.0)  # seconds between attempts to write a batch before it counts as dropped
_BATCH = 1000  # records handed to LogWriter.append at once at most


class Capture:
    """The bounded queue, the writer thread and the index of answered request ids."""

    def __init__(self, log_dir: Path, metrics: Metrics, *, enabled: bool = True, queue_size: int = 10_000,
                 flush_s: float = 1.0, block_s: float = 5.0, remember: int = 200_000) -> None:
        self.log_dir = Path(log_dir)
        self.metrics = metrics
        self.enabled = enabled
        self.flush_s = flush_s
        self.block_s = block_s
        self.remember = remember
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._wake = threading.Event()  # write now: a full batch is queued, the queue is full, or closing
        self._wake_at = min(_BATCH, queue_size)
        self._closing = False
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._writer: LogWriter | None = None
        metrics.capture_queue.set_function(self._queue.qsize)

    def start(self) -> None:
        self._writer = LogWriter(self.log_dir)
        for request_id in _recent_request_ids(self.log_dir, self.remember):
            self._remember(request_id)
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="log-capture", daemon=True)
            self._thread.start()

    async def record(self, record: LogRecord) -> bool:
        """Queue an answered request's record; False when the queue stayed full (answer 503 then)."""
        queued = await self._put(record) if self.enabled else True
        if queued:
            self._remember(record.request_id)
        return queued

    def knows(self, request_id: str) -> bool:
        return request_id in self._answered

    async def feedback(self, event: FeedbackEvent) -> bool:
        """Queue a feedback event (written even when request capture is off); False when full."""
        if not self.enabled:
            self._writer.append_feedback([event])
            return True
        return await self._put(event)

    def close(self, timeout_s: float = 60.0) -> None:
        """Write everything queued, then stop the thread (the server's graceful stop)."""
        if self._thread is not None:
            self._closing = True
            self._wake.set()
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                left = self._queue.qsize()
                self.metrics.capture_dropped.inc(left)
                log.error("capture: the writer did not finish within %.0f s; %d queued records are lost", timeout_s, left)
            self._thread = None
        if self._writer is not None:
            self._writer.close()

    async def _put(self, item) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._wake.set()
            try:  # back-pressure: this request waits for room, in a thread so the event loop keeps serving
                await asyncio.to_thread(self._queue.put, item, True, self.block_s)
            except queue.Full:
                self.metrics.capture_refused.inc()
                log.error("capture: the log queue stayed full for %.1f s (serving.capture_block_s); request refused",
                          self.block_s)
                return False
        if self._queue.qsize() >= self._wake_at:  # a write batch is waiting (or the queue is full): write now
            self._wake.set()
        return True

    def _remember(self, request_id: str) -> None:
        self._answered[request_id] = None
        if len(self._answered) > self.remember:
            self._answered.popitem(last=False)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            closing = self._closing  # read before draining: what was queued before close() is written
            items = self._drain()
            if items:
                self._write(items)
            if closing:
                return

    def _drain(self) -> list:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def _write(self, items: list) -> None:
        records = [item for item in items if isinstance(item, LogRecord)]
        events = [item for item in items if isinstance(item, FeedbackEvent)]
        for start in range(0, len(records), _BATCH):
            chunk = records[start:start + _BATCH]
            if self._with_retries(lambda: self._writer.append(chunk), len(chunk), "log records"):
                self.metrics.capture_written.inc(len(chunk))
        if events:
            self._with_retries(lambda: self._writer.append_feedback(events), 0, "feedback events")

    def _with_retries(self, write, records: int, what: str) -> bool:
        for wait in (*_RETRIES, None):
            try:
                write()
                return True
            except Exception as err:  # disk full, permissions, a record the writer refuses...
                if wait is None:
                    self.metrics.capture_dropped.inc(records)
                    log.error("capture: %s could not be written to %s after %d attempts (%s: %s)",
                              what, self.log_dir, len(_RETRIES) + 1, type(err).__name__, err)
                    return False
                time.sleep(wait)
        return False


def _recent_request_ids(log_dir: Path, limit: int) -> list[str]:
    """The request ids in today's and yesterday's log files (JSON Lines), oldest first, at most `limit`."""
    today = datetime.now(timezone.utc).date()
    ids: list[str] = []
    for day in (today - timedelta(days=1), today):
        path = log_dir / f"{day.isoformat()}.jsonl"
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    request_id = json.loads(line).get("request_id")
                except (ValueError, AttributeError):
                    continue
                if isinstance(request_id, str):
                    ids.append(request_id)
    return ids[-limit:]
