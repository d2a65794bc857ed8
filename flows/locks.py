"""One rebuild per output root at a time.

Two guards:
- for local roots, an exclusive lock on <root>/.build.lock, released by the kernel even when the build is
  killed, so a rerun after a crash starts at once;
- with a Prefect server (PREFECT_API_URL set: deployments, workers on several machines), also a global
  concurrency limit of 1 named after the output root. Its slot is leased and renewed while the build runs; a
  killed build's lease expires after LEASE_SECONDS, and a new build waits that long before giving up.
A second build of a root that is being written fails with a message naming the root, instead of interleaving
writes. Without a server (`gadms build`), Prefect's temporary API runs no lease expiry, so only the file lock
is used there.
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
from prefect.settings import PREFECT_API_URL

from storage.errors import GadmsError
from storage.fs import filesystem, is_local

LEASE_SECONDS = 60


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
    _, root = filesystem(output_root)
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
def output_root_lock(output_root: str) -> Iterator[None]:
    with ExitStack() as stack:
        if is_local(output_root):
            stack.enter_context(_local_lock(output_root))
        if PREFECT_API_URL.value():
            name = concurrency_limit_name(output_root)
            _ensure_limit(name)
            try:
                stack.enter_context(concurrency(name, occupy=1, timeout_seconds=LEASE_SECONDS + 30,
                                                lease_duration=LEASE_SECONDS, strict=True))
            except TimeoutError:
                raise GadmsError(f"{output_root}: another build holds the concurrency limit {name!r}") from None
        yield
