"""A real threaded HTTP server for a rendered site, bound to 127.0.0.1 only, with the site's faults as behaviour.

Plain files are served as they are (by extension: a `.jpg` holding HTML goes out as image/jpeg). The paths in
the site's fault table (site.json, see `curation.synthweb.site.FAULTS`) behave as listed there:
  slow            waits `slow_seconds` before answering with the image
  redirect_loop   302 to the other loop URL, forever
  redirect        301 to a real image
  http_500        500 Internal Server Error
  rate_limited    429 with `Retry-After` for the first `times` requests (per server), then the image
  noai            the image with `X-Robots-Tag: noai`
  short_read      announces the full Content-Length, sends half of the image and closes the connection
Pages, robots.txt and the sitemap get `__BASE_URL__` replaced by the server's base URL.
"""
from __future__ import annotations

import json
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from curation.synthweb.site import BASE_URL_PLACEHOLDER
from storage.errors import GadmsError

TEXT_SUFFIXES = (".html", ".xml", ".txt")


class _Handler(SimpleHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # tests and the demo would drown in access logs

    def list_directory(self, path):
        self.send_error(404)  # no directory listings: a crawler finds images through the pages only
        return None

    def do_GET(self):
        self.server.record_request(self.path)
        path = self.path.split("?", 1)[0].split("#", 1)[0]
        if path.startswith("/_"):  # payload files are served only through their fault URL
            self.send_error(404)
            return
        spec = self.server.faults.get(path)
        if spec is not None:
            self._fault(path, spec)
            return
        if path.endswith(TEXT_SUFFIXES) or path == "/":
            self._text(path)
            return
        super().do_GET()

    def _fault(self, path: str, spec: dict) -> None:
        fault = spec["fault"]
        if fault in ("redirect_loop", "redirect"):
            self.send_response(spec["status"])
            self.send_header("Location", spec["location"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault == "http_500":
            self.send_error(500, "Internal Server Error")
        elif fault == "rate_limited" and self.server.count_hit(path) <= spec["times"]:
            self.send_response(429)
            self.send_header("Retry-After", str(spec["retry_after"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif fault == "slow":
            if not self.server.stopping.wait(self.server.slow_seconds):
                self._image(spec["file"])
        elif fault == "noai":
            self._image(path, extra_headers={"X-Robots-Tag": "noai"})
        elif fault == "short_read":
            data = self._read(spec["file"])
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif fault == "rate_limited":
            self._image(spec["file"])
        else:  # files that are hostile by content (truncated, HTML, bomb) or absent (404)
            super().do_GET()

    def _read(self, path: str) -> bytes:
        return (Path(self.directory) / path.lstrip("/")).read_bytes()

    def _image(self, path: str, extra_headers: dict | None = None) -> None:
        data = self._read(path)
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _text(self, path: str) -> None:
        target = Path(self.directory) / ("index.html" if path == "/" else path.lstrip("/"))
        try:
            if not target.resolve().is_relative_to(Path(self.directory).resolve()):
                raise FileNotFoundError
            text = target.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            self.send_error(404)
            return
        data = text.replace(BASE_URL_PLACEHOLDER.encode(), self.server.base_url.encode())
        self.send_response(200)
        self.send_header("Content-Type", self.guess_type(str(target)) + "; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, handler, faults: dict, slow_seconds: float):
        super().__init__(("127.0.0.1", port), handler)
        self.faults = faults
        self.slow_seconds = slow_seconds
        self.stopping = threading.Event()
        self.base_url = f"http://127.0.0.1:{self.server_address[1]}"
        self._lock = threading.Lock()
        self._hits: dict[str, int] = {}
        self.requests: list[str] = []

    def handle_error(self, request, client_address) -> None:
        # A client that gives up (the slow endpoint, a byte cap) breaks the pipe: expected here, not news.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def count_hit(self, path: str) -> int:
        with self._lock:
            self._hits[path] = self._hits.get(path, 0) + 1
            return self._hits[path]

    def record_request(self, path: str) -> None:
        with self._lock:
            self.requests.append(path)


class SiteServer:
    """Serve a site rendered by `render_site` on 127.0.0.1 (port 0: a free port). A context manager.

    `requests` lists the paths requested so far, in order (what a polite crawler did or did not fetch).
    """

    def __init__(self, site_dir: str | Path, port: int = 0, slow_seconds: float = 5.0):
        self.site_dir = Path(site_dir)
        site_json = self.site_dir / "site.json"
        if not site_json.is_file() or not (self.site_dir / "www").is_dir():
            raise GadmsError(f"{self.site_dir}: not a rendered site (no site.json / www/); run `gadms synthweb render`")
        self.faults = json.loads(site_json.read_text(encoding="utf-8"))["faults"]
        self.port = port
        self.slow_seconds = slow_seconds
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("SiteServer is not started")
        return self._server.base_url

    @property
    def requests(self) -> list[str]:
        return list(self._server.requests) if self._server else []

    def start(self) -> "SiteServer":
        handler = partial(_Handler, directory=str(self.site_dir / "www"))
        try:
            self._server = _Server(self.port, handler, self.faults, self.slow_seconds)
        except OSError as exc:
            raise GadmsError(f"cannot listen on 127.0.0.1:{self.port}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self._server.serve_forever, name="synthweb-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stopping.set()  # wakes slow answers so the shutdown is quick
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> "SiteServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
