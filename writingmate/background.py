"""Fire-and-forget coroutines that the event loop must not garbage-collect halfway."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

_running: set[asyncio.Task] = set()


def run_in_background(coro: Coroutine) -> asyncio.Task:
    """Start `coro` as a task and hold a reference to it until it ends (the loop keeps only weak ones)."""
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
