"""Fire-and-forget coroutines the event loop must not garbage-collect halfway, per-loop singletons and group commits."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from typing import Generic, TypeVar

T = TypeVar("T")

_running: set[asyncio.Task] = set()


def run_in_background(coro: Coroutine) -> asyncio.Task:
    """Start `coro` as a task and hold a reference to it until it ends (the loop keeps only weak ones)."""
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


def one_per_event_loop(factory: Callable[[], T]) -> Callable[[], T]:
    """A getter of one `factory()` object per running event loop (asyncio objects are bound to their loop).

    Forgotten with the loop, so tests that run a fresh loop each get a fresh object.
    """
    objects: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = weakref.WeakKeyDictionary()

    def get() -> T:
        loop = asyncio.get_running_loop()
        found = objects.get(loop)
        if found is None:
            found = objects[loop] = factory()
        return found

    return get


class GroupCommitter(Generic[T]):
    """One per event loop: a queue of finished work and at most one task writing it in batches.

    Work submitted while a batch is being written joins the next one, so concurrent requests share one
    transaction (one commit, one hop to a database thread); a lone submission is written at once, or
    after `linger_seconds()` so that back-to-back ones can share it. Subclasses write a batch in
    `commit()` and tell each submitter its outcome there; `commit()` must not raise.
    """

    max_batch = 500

    def __init__(self) -> None:
        self.queue: list[T] = []
        self.writer: asyncio.Task | None = None

    def linger_seconds(self) -> float:
        return 0.0

    async def commit(self, batch: list[T]) -> None:
        raise NotImplementedError

    def submit(self, item: T) -> None:
        self.queue.append(item)
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            linger = self.linger_seconds()
            if linger > 0 and len(self.queue) < self.max_batch:
                await asyncio.sleep(linger)
            while self.queue:
                batch = self.queue[: self.max_batch]
                del self.queue[: self.max_batch]
                await self.commit(batch)
        finally:
            self.writer = None
            if self.queue:
                self.writer = asyncio.get_running_loop().create_task(self._drain())
