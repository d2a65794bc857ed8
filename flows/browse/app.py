"""The Starlette application of `gadms browse`: server-rendered pages over one catalog, read-only."""
from __future__ import annotations

import threading
from functools import cached_property
from urllib.parse import urlencode

import duckdb
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from flows.browse import queries
from flows.browse.ids import NAME, REASON, SAMPLE_ID, checked, count, optional
from flows.browse.overlay import overlay
from storage.stats import caption_stats

PAGE_SIZE = 48
FILTERS = ("q", "template", "model", "shard", "run")  # the samples grid's query parameters besides the cursor
THUMBNAILS_PER_PAGE = 200
MAX_K = 100
# No script may run, whatever a caption holds; images and styles come from this server only.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def web_link(url: str | None) -> str | None:
    """`url` when it is an http(s) URL a page may link to, else None (no javascript: or data: links)."""
    return url if url and url.lower().startswith(("http://", "https://")) else None


TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("flows.browse", "templates"), autoescape=True,
                               undefined=jinja2.StrictUndefined)
TEMPLATES.filters["web_link"] = web_link


class Pages:
    """One catalog (and optionally one loaded search model) behind the routes."""

    def __init__(self, con: duckdb.DuckDBPyConnection, root: str, searcher=None):
        self.con, self.root, self.searcher = con, root, searcher
        self._search_lock = threading.Lock()

    @cached_property
    def facets(self) -> dict[str, list[str]]:
        with self.con.cursor() as cur:
            return queries.facets(cur)

    def overview(self, request: Request) -> Response:
        with self.con.cursor() as cur:
            stats = caption_stats(cur, top=15)
            context = {"stats": stats, "stages": queries.rejects_by_stage(cur),
                       "reasons": queries.reject_reasons(cur), "runs": queries.runs(cur)}
        return page("overview.html", root=self.root, **context)

    def samples(self, request: Request) -> Response:
        p = request.query_params
        where = queries.SampleFilter(
            words=queries.SampleFilter.words_of(p.get("q", "")[:500]),
            template=optional(NAME, p.get("template"), "template id"),
            caption_model=optional(NAME, p.get("model"), "caption model"),
            shard=optional(NAME, p.get("shard"), "shard id"),
            run=optional(NAME, p.get("run"), "run id"))
        cursor = queries.Cursor(optional(NAME, p.get("from"), "shard id"), count(p.get("skip"), "skip", 0, 0, 10**9))
        with self.con.cursor() as cur:
            rows, following = queries.sample_page(cur, where, cursor, PAGE_SIZE)
        chosen = {k: v for k, v in p.items() if k in FILTERS and v}
        next_url = None if following is None else "/samples?" + urlencode(
            {**chosen, "from": following.shard, "skip": following.skip})
        return page("samples.html", rows=rows, facets=self.facets, chosen=chosen, next_url=next_url,
                    first_url="/samples?" + urlencode(chosen), paged=cursor != queries.Cursor())

    def sample(self, request: Request) -> Response:
        shard_id, sample_id = self._sample_key(request)
        with self.con.cursor() as cur:
            row = queries.sample(cur, shard_id, sample_id)
            if row is None:
                raise HTTPException(404, "no such sample")
            margin = queries.crop_margin(cur, row["run_id"])
            duplicates = queries.near_duplicates(cur, sample_id)
            duplicate_thumbnails = queries.near_duplicate_thumbnails(cur, sample_id)
        return page("sample.html", s=row, drawing=overlay(row["bbox"], row["keypoints"], margin),
                    duplicates=duplicates, duplicate_thumbnails=duplicate_thumbnails)

    def crop(self, request: Request) -> Response:
        shard_id, sample_id = self._sample_key(request)
        with self.con.cursor() as cur:
            return jpeg(queries.crop_jpeg(cur, shard_id, sample_id))

    def rejects(self, request: Request) -> Response:
        with self.con.cursor() as cur:
            return page("rejects.html", reasons=queries.reject_reasons(cur), cost=queries.thumbnail_cost(cur))

    def reject_reason(self, request: Request) -> Response:
        stage = checked(REASON, request.path_params["stage"], "stage")
        reason = checked(REASON, request.path_params["reason"], "reason")
        shard = optional(NAME, request.query_params.get("shard"), "shard id")
        with self.con.cursor() as cur:
            total = queries.reject_count(cur, stage, reason)
            if not total:
                raise HTTPException(404, "no such reject reason")
            thumbnails = queries.reject_thumbnails(cur, stage, reason, shard, THUMBNAILS_PER_PAGE)
        return page("reject_reason.html", stage=stage, reason=reason, total=total, thumbnails=thumbnails,
                    shard=shard, shards=self.facets["shards"])

    def reject_thumbnail(self, request: Request) -> Response:
        shard_id = checked(NAME, request.path_params["shard_id"], "shard id")
        with self.con.cursor() as cur:
            return jpeg(queries.thumbnail_jpeg(cur, shard_id, request.path_params["reject_row"]))

    def search(self, request: Request) -> Response:
        text = request.query_params.get("q", "").strip()[:500]
        k = count(request.query_params.get("k"), "k", 12, 1, MAX_K)
        hits = []
        if self.searcher is not None and text:
            with self._search_lock:
                hits = self.searcher.hits(self.searcher.top(text, k))
            with self.con.cursor() as cur:
                found = queries.samples_by_id(cur, [h["id"] for h in hits])
            hits = [{**h, "sample": found[h["id"]]} for h in hits if h["id"] in found]
        return page("search.html", enabled=self.searcher is not None, q=text, k=k, hits=hits)

    def _sample_key(self, request: Request) -> tuple[str, str]:
        return (checked(NAME, request.path_params["shard_id"], "shard id"),
                checked(SAMPLE_ID, request.path_params["sample_id"], "sample id"))


def page(template: str, **context) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(template).render(**context), headers=HEADERS)


def jpeg(data: bytes | None) -> Response:
    if data is None:
        raise HTTPException(404, "no such image")
    return Response(data, media_type="image/jpeg", headers={**HEADERS, "Cache-Control": "max-age=3600"})


async def error_page(request: Request, exc: HTTPException) -> HTMLResponse:
    response = page("error.html", status=exc.status_code, message=exc.detail)
    response.status_code = exc.status_code
    return response


def create_app(con: duckdb.DuckDBPyConnection, root: str, searcher=None, host: str = "127.0.0.1") -> Starlette:
    """The page over an open catalog; on a loopback `host` only requests naming a loopback host are answered
    (a web page cannot reach it through DNS rebinding)."""
    pages = Pages(con, root, searcher)
    routes = [
        Route("/", pages.overview),
        Route("/samples", pages.samples),
        Route("/samples/{shard_id}/{sample_id}", pages.sample),
        Route("/crops/{shard_id}/{sample_id}.jpg", pages.crop),
        Route("/rejects", pages.rejects),
        Route("/rejects/{stage}/{reason}", pages.reject_reason),
        Route("/reject-thumbnails/{shard_id}/{reject_row:int}.jpg", pages.reject_thumbnail),
        Route("/search", pages.search),
    ]
    hosts = [*LOOPBACK_HOSTS, host] if host in LOOPBACK_HOSTS else ["*"]
    return Starlette(routes=routes, exception_handlers={HTTPException: error_page},
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)])
