"""Local paths and fsspec URLs (s3://, gs://, memory://) behind one small interface."""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol

from storage.errors import GadmsError


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of `path` and the path as that filesystem names it."""
    try:
        fs, _, paths = fsspec.get_fs_token_paths(str(path))
    except ImportError as exc:  # e.g. s3:// without s3fs installed
        raise GadmsError(f"{path}: {exc}") from None
    return fs, paths[0]


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def require_folder(path: str, what: str) -> None:
    """GadmsError unless `path` is an existing folder (on an object store: a prefix with objects under it)."""
    fs, p = filesystem(path)
    if not fs.exists(p):
        raise GadmsError(f"{path}: {what} not found")
    refuse_file(path, what)


def refuse_file(path: str, what: str) -> None:
    """GadmsError when `path`, meant to be a folder, is a file."""
    fs, p = filesystem(path)
    if fs.exists(p) and not fs.isdir(p):
        raise GadmsError(f"{path}: {what} is a file, not a folder")


def refuse_folder(path: str, what: str) -> None:
    """GadmsError when `path`, meant to be a file, is a folder: found before the work whose result it would hold."""
    fs, p = filesystem(path)
    if fs.isdir(p):
        raise GadmsError(f"{path}: {what} is a folder, not a file")


def make_folder(path: str, what: str) -> None:
    """Create folder `path` (and its parents) if needed; GadmsError when it is a file or cannot be created."""
    fs, p = filesystem(path)
    refuse_file(path, what)
    try:
        fs.makedirs(p, exist_ok=True)
        if isinstance(fs, LocalFileSystem) and not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as exc:
        raise GadmsError(f"{path}: cannot write the {what}: {exc.strerror or exc}") from None


def is_local(path: str) -> bool:
    return get_protocol(str(path)) in ("file", "local")


def join(root: str, *parts: str) -> str:
    root = str(root)
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else os.path.join(root, *parts)


@contextmanager
def atomic_write(path: str, mode: str = "wb", native: bool = False) -> Iterator:
    """Open a temporary sibling of `path`; rename it onto `path` only when the block finishes.

    A writer killed inside the block leaves at most a dot-prefixed temporary file, which no reader globs.
    On object stores the final upload is a single PUT, which is atomic already. `native` (binary writes): on a local
    disk the file is a pyarrow NativeFile, so an Arrow or Parquet writer writes to the disk directly; through a
    Python file object every piece it writes is first copied into a new bytes object (hundreds of MB of image
    bytes per crawl chunk).
    """
    fs, p = filesystem(path)
    parent, name = p.rsplit("/", 1) if "/" in p else ("", p)
    tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    if parent:
        fs.makedirs(parent, exist_ok=True)
    local = isinstance(fs, LocalFileSystem)
    try:
        if native and local:
            import pyarrow as pa

            with pa.OSFile(tmp, "wb") as f:
                yield f
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with fs.open(tmp, mode) as f:
                yield f
                if local:
                    f.flush()
                    os.fsync(f.fileno())
        if local:
            os.replace(tmp, p)
        else:
            fs.mv(tmp, p)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def replace(source: str, target: str) -> None:
    """Rename `source` onto `target` (one rename on a local disk; a move, i.e. copy + delete, on object stores)."""
    fs, src = filesystem(source)
    _, dst = filesystem(target)
    if isinstance(fs, LocalFileSystem):
        os.replace(src, dst)
    else:
        fs.mv(src, dst)


def is_within(path: str, folder: str) -> bool:
    """True when `path` is `folder` or lies under it (same filesystem; local paths with symlinks resolved)."""
    (fs_a, a), (fs_b, b) = filesystem(path), filesystem(folder)
    if fs_a.protocol != fs_b.protocol:
        return False
    if isinstance(fs_a, LocalFileSystem):
        a, b = os.path.realpath(a), os.path.realpath(b)
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/")
