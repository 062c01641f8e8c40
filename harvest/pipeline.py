"""Overlap the harvest's CPU work with its forward passes: tokenising ahead, writing shards behind.

The forward is the only work a harvest must do; tokenising the next documents (Hugging Face tokenizers
release the GIL) and writing the last finished shard (chunk files, crc32c) run in one thread
each while the model computes. Nothing changes the order or the bytes: the window stream is consumed in
order by one thread, and shards are written whole, one at a time, in the order they were finished.

* :class:`Prefetch` iterates a generator in a daemon thread, a budget ahead (the harvest: two shards'
  rows per rank, see ``run.harvest``; that rides out a slow document read, e.g. the demo corpus opening a
  compressed file, ~0.1 s); an exception in the generator is raised in the consumer at the item where it
  happened.
* :class:`Behind` runs write jobs in one worker thread, at most one job queued behind the one running (so
  at most two finished shards are in memory); :meth:`Behind.wait` re-raises a failed job's exception.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class Prefetch(Generic[T]):
    """``for x in Prefetch(gen)``: the items of ``gen`` in order, produced up to ``depth`` ahead, where
    each item counts ``cost(item)`` (1 by default; at least one item is always allowed ahead)."""

    def __init__(self, items: Iterator[T], depth: int = 512, cost: Callable[[T], int] | None = None) -> None:
        self._q: queue.Queue = queue.Queue()  # bounded by the budget, not by a count
        self._depth, self._cost, self._ahead = depth, cost or (lambda _: 1), 0
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), daemon=True, name="prefetch")
        self._thread.start()

    def _put(self, item, err: BaseException | None = None) -> bool:
        c = 0 if item is _END else self._cost(item)
        with self._room:
            while self._ahead > 0 and self._ahead + c > self._depth and not self._stop.is_set():
                self._room.wait(0.1)
            if self._stop.is_set():
                return False
            self._ahead += c
        self._q.put((item, c, err))
        return True

    def _run(self, items: Iterator[T]) -> None:
        try:
            for x in items:
                if not self._put(x):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_END, e)
            return
        self._put(_END)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                x, c, err = self._q.get()
                with self._room:
                    self._ahead -= c
                    self._room.notify()
                if err is not None:
                    raise err
                if x is _END:
                    return
                yield x
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer (it ends at its next item) and wait for it."""
        self._stop.set()
        self._thread.join()


class Behind:
    """One background writer: ``submit(fn)`` waits for the previous job, then queues ``fn``."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._last: Future | None = None

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()
        self._last = self._pool.submit(fn)

    def wait(self) -> None:
        """Block until the queued job is done; re-raise its exception."""
        if self._last is not None:
            last, self._last = self._last, None
            last.result()

    def __enter__(self) -> Behind:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)
