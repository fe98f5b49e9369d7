"""Micro-batching for the inspection service: concurrent requests become one model call.

Requests queue their preprocessed images; one asyncio task takes the oldest, waits at most
``max_wait_ms`` from its arrival (less when ``max_batch`` images are already queued), runs everything
queued up to ``max_batch`` images as ONE call in a dedicated worker thread, and hands each request
its rows. While a batch runs, new requests queue up and form the next batch, so under load batches
grow without waiting. A request is never split across calls (it may exceed ``max_batch`` alone).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More images wait for the model than the batcher accepts (the service answers 503)."""


class MicroBatcher:
    """Queue of (images, future); one worker thread runs ``run`` on concatenated batches.

    Args:
        run: (N, C, H, W) float32 -> every output of the model, a list of arrays whose first axis is N (a classifier:
            [logits (N, K)]; a model with several named outputs, all of them); called in the worker thread, one
            call at a time.
        max_batch: most images per call.
        max_wait_ms: longest wait of the oldest request for others to join (ms; 0 = run what is queued).
        max_queue: most images waiting; :meth:`submit` raises :class:`QueueFull` beyond.
    """

    def __init__(
        self, run: Callable[[np.ndarray], Sequence[np.ndarray]], *, max_batch: int, max_wait_ms: float, max_queue: int
    ) -> None:
        self._run = run
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1e3, max_queue
        self._pending: collections.deque[tuple[np.ndarray, asyncio.Future, float]] = collections.deque()
        self._queued_images = 0
        self._arrived: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._requests = 0
        self._inflight: list[tuple[np.ndarray, asyncio.Future, float]] = []

    def start(self) -> None:
        """Start the batching task on the running event loop (idempotent)."""
        if self._task is None:
            self._arrived, self._full = asyncio.Event(), asyncio.Event()
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="defectlite-model")
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="defectlite-batcher")

    async def stop(self) -> None:
        """Cancel the task, fail queued requests, and release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for _, fut, _ in [*self._inflight, *self._pending]:
            if not fut.done():
                fut.set_exception(RuntimeError("the service is shutting down"))
        self._pending.clear()
        self._queued_images = 0
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, x: np.ndarray) -> tuple[list[np.ndarray], float, int]:
        """Queue images (n, C, H, W) and wait for their rows.

        Returns:
            (this request's rows of every model output (each (n, ...)), wall time of the model call in ms, images in
            that call).

        Raises:
            QueueFull: ``max_queue`` images already wait.
            RuntimeError: :meth:`start` was not called, or the service stopped.
        """
        if self._task is None or self._arrived is None or self._full is None:
            raise RuntimeError("MicroBatcher.submit before start()")
        if self._queued_images + len(x) > self.max_queue:
            raise QueueFull(f"{self._queued_images} images already wait for the model (limit {self.max_queue})")
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((x, fut, time.perf_counter()))
        self._queued_images += len(x)
        self._requests += 1
        self._arrived.set()
        if self._queued_images >= self.max_batch:
            self._full.set()
        return await fut

    def stats(self) -> dict[str, Any]:
        """Requests, images, model calls and how many calls had each batch size."""
        calls = sum(self._batch_sizes.values())
        return {
            "requests": self._requests,
            "images": sum(k * v for k, v in self._batch_sizes.items()),
            "batches": calls,
            "largest_batch": max(self._batch_sizes, default=0),
            "mean_batch": round(sum(k * v for k, v in self._batch_sizes.items()) / calls, 3) if calls else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
            "queued_images": self._queued_images,
        }

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        """Pop queued requests up to ``max_batch`` images (at least one request)."""
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.popleft()
            self._queued_images -= len(item[0])
            if not item[1].done():  # a request whose client went away is dropped
                batch.append(item)
                n += len(item[0])
        if self._queued_images < self.max_batch:
            self._full.clear()
        if not self._pending:
            self._arrived.clear()
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._arrived.wait()
            if not self._pending:
                self._arrived.clear()
                continue
            wait_s = self.max_wait_s - (time.perf_counter() - self._pending[0][2])
            if wait_s > 0 and self._queued_images < self.max_batch:
                try:  # cancelling Event.wait loses nothing
                    await asyncio.wait_for(self._full.wait(), wait_s)
                except asyncio.TimeoutError:
                    pass
            batch = self._inflight = self._take()
            if not batch:
                continue
            x = batch[0][0] if len(batch) == 1 else np.concatenate([b[0] for b in batch])
            try:
                out, ms = await loop.run_in_executor(self._executor, self._timed, x)
            except Exception as e:  # the model failed: every request of the batch gets the error
                log.exception("model call on a batch of %d failed", len(x))
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self._batch_sizes[len(x)] += 1
            i = 0
            for xi, fut, _ in batch:
                if not fut.done():
                    fut.set_result(([o[i : i + len(xi)] for o in out], ms, len(x)))
                i += len(xi)

    def _timed(self, x: np.ndarray) -> tuple[list[np.ndarray], float]:
        t0 = time.perf_counter()
        out = self._run(x)
        return out, (time.perf_counter() - t0) * 1e3
