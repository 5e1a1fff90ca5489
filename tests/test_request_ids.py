"""Request ids: the ledger keys usage lines by them, so no two requests may ever share one."""

from __future__ import annotations

import os
import re

from gateway.asgi import new_request_id


def test_ids_are_openai_shaped_and_distinct():
    ids = [new_request_id() for _ in range(50_000)]
    assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids[:100])
    assert len(set(ids)) == len(ids)


def test_a_forked_process_does_not_repeat_its_parents_ids():
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write_end, " ".join(new_request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    child_ids = os.read(read_end, 4096).decode().split()
    os.waitpid(child, 0)
    parent_ids = [new_request_id() for _ in range(3)]
    assert len(child_ids) == 3 and not set(child_ids) & set(parent_ids)
