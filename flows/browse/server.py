"""Open a root for browsing and serve its pages with uvicorn."""
from __future__ import annotations

import socket
from pathlib import Path

import duckdb

from storage.catalog import connect
from storage.errors import GadmsError
from storage.fs import is_local
from storage.layout import OutputLayout


def open_root(root: str, checkpoint: str | None, index_path: str | None) -> tuple[duckdb.DuckDBPyConnection, object]:
    """The root's catalog, read-only, and the search model over its gallery when `checkpoint` is given."""
    if is_local(root) and not Path(root).is_dir():
        raise GadmsError(f"{root}: no such output root")
    con = connect(OutputLayout(root).default_catalog_path(), read_only=True)
    if checkpoint is None:
        return con, None
    from storage.devices import default_device
    from gadms_model.retrieval import TextSearch

    try:
        return con, TextSearch(checkpoint, root, default_device(), index_path)
    except BaseException:
        con.close()
        raise


def listening_socket(host: str, port: int) -> socket.socket:
    sock = None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise GadmsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(con: duckdb.DuckDBPyConnection, root: str, searcher, host: str, port: int) -> None:
    """Serve until interrupted; prints the address first (with the port chosen when `port` is 0)."""
    import uvicorn

    from flows.browse.app import create_app

    sock = listening_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"gadms browse: serving {root} on http://{shown}:{bound}/ (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(con, root, searcher, host), log_level="warning"))
    server.run(sockets=[sock])
