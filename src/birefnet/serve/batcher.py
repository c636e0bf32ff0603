"""A bounded work queue in front of one model, with micro-batching of concurrent requests.

The HTTP handlers run on the event loop (and on its thread pool for decoding and encoding); the
network runs on one worker thread per model, because a forward pass holds the CPU/GPU for tens of
milliseconds to seconds and must not block the event loop. Requests that arrive while the model is
busy wait in a queue; when the worker takes the next request it also takes up to ``max_batch - 1``
more queued requests of the same model input size (waiting at most ``max_wait`` seconds for them)
and runs them as one batch.

Bounds: the queue holds at most ``capacity`` waiting requests; :meth:`MicroBatcher.submit` raises
:class:`QueueFull` beyond that (the server answers 503), so memory stays bounded under any load.
A caller that gives up (time-out, client gone) cancels its future; the worker skips cancelled
requests instead of computing them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The model's queue is at capacity; retry later."""


class BatcherStopped(RuntimeError):
    """The batcher was stopped (server shutting down)."""


@dataclass
class _Job:
    key: Any  # batch key: jobs with equal, non-None keys may share a batch
    payload: Any
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Runs ``run_batch(payloads) -> results`` on a worker thread, batching jobs with equal keys.

    Args:
        run_batch: called on the worker thread with a list of payloads (length 1..max_batch, all
            with the same key); returns one result per payload, in order. An exception fails
            every job of the batch (after a one-by-one retry when the batch had several jobs, so
            one bad input cannot fail its neighbours).
        max_batch: most jobs per call.
        max_wait: seconds the worker waits for more same-key jobs once it has one (0 = take
            only what is already queued).
        capacity: most jobs waiting (not counting the batch being computed).
        name: thread name, for logs.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        *,
        max_batch: int = 4,
        max_wait: float = 0.005,
        capacity: int = 32,
        name: str = "birefnet-model",
    ) -> None:
        if max_batch < 1 or capacity < 1:
            raise ValueError(f"max_batch and capacity must be >= 1, got {max_batch} and {capacity}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.capacity = int(capacity)
        self.name = name
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0  # statistics, read by /healthz
        self.jobs_done = 0
        self.busy = False

    # ---- control --------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart after :meth:`stop`) the worker thread; idempotent."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Fail the waiting jobs with :class:`BatcherStopped`, let the running batch finish, join."""
        with self._cond:
            self._stopping = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherStopped("the server is shutting down"))
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the batch being computed)."""
        with self._cond:
            return len(self._queue)

    # ---- submitting -----------------------------------------------------------------------

    def submit(self, payload: Any, key: Any = None) -> Future:
        """Queue one job; its future resolves to the result of ``run_batch`` for it.

        Args:
            payload: what ``run_batch`` gets.
            key: jobs with the same non-None key may be batched together; None: always alone.

        Raises:
            QueueFull: ``capacity`` jobs are already waiting.
            BatcherStopped: the batcher is stopping.
        """
        job = _Job(key=key, payload=payload)
        with self._cond:
            if self._stopping:
                raise BatcherStopped("the server is shutting down")
            if self._thread is None or not self._thread.is_alive():  # first use, or the worker died
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            if len(self._queue) >= self.capacity:
                raise QueueFull(f"{len(self._queue)} requests are already waiting for the model")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    # ---- the worker -----------------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        """The next batch: the oldest job plus queued jobs with its key (waiting up to max_wait)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            first = self._queue.popleft()
            batch = [first]
            if first.key is None or self.max_batch == 1:
                return batch
            deadline = time.monotonic() + self.max_wait
            while True:
                for job in list(self._queue):
                    if len(batch) >= self.max_batch:
                        break
                    if job.key == first.key:
                        self._queue.remove(job)
                        batch.append(job)
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._stopping:
                    return batch
                self._cond.wait(remaining)

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.busy = True
            try:
                self._run(live)
            finally:
                self.busy = False

    def _run(self, jobs: list[_Job]) -> None:
        try:
            results = self.run_batch([job.payload for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} inputs")
        except Exception as e:  # delivered to the waiting requests
            if len(jobs) > 1:
                logger.warning("batch of %d failed (%s); retrying one by one", len(jobs), e)
                for job in jobs:
                    self._run_single(job)
                return
            jobs[0].future.set_exception(e)
            return
        self.batches += 1
        self.jobs_done += len(jobs)
        for job, result in zip(jobs, results):
            job.future.set_result(result)

    def _run_single(self, job: _Job) -> None:
        try:
            result = self.run_batch([job.payload])[0]
        except Exception as e:
            job.future.set_exception(e)
            return
        self.batches += 1
        self.jobs_done += 1
        job.future.set_result(result)
