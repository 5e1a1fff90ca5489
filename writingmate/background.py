"""Fire-and-forget coroutines that the event loop must not garbage-collect halfway, and per-loop singletons."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Coroutine
from typing import TypeVar

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
