"""One rebuild per output root at a time.

Two guards: a Prefect global concurrency limit named after the output root (limit 1; it works across machines
and work pools when runs share a Prefect server), and, for local roots, an exclusive lock on <root>/.build.lock
(it also covers `gadms build` runs with no server). A second build of the same root fails at once with a
message naming the root, instead of interleaving writes.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import ExitStack, contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from storage.errors import GadmsError
from storage.fs import filesystem, is_local


def concurrency_limit_name(output_root: str) -> str:
    return "webperson-root-" + hashlib.sha256(output_root.rstrip("/").encode()).hexdigest()[:16]


def _ensure_limit(name: str) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def _local_lock(output_root: str) -> Iterator[None]:
    fs, root = filesystem(output_root)
    os.makedirs(root, exist_ok=True)
    lock_path = os.path.join(root, ".build.lock")
    with open(lock_path, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GadmsError(f"{output_root}: another build is writing this output root ({lock_path} is held)") from None
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


@contextmanager
def output_root_lock(output_root: str, wait_seconds: float = 5.0) -> Iterator[None]:
    name = concurrency_limit_name(output_root)
    _ensure_limit(name)
    with ExitStack() as stack:
        try:
            stack.enter_context(concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True))
        except TimeoutError:
            raise GadmsError(f"{output_root}: another build holds the concurrency limit {name!r}") from None
        if is_local(output_root):
            stack.enter_context(_local_lock(output_root))
        yield
