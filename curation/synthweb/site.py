"""Write the synthetic web as a static site, its ground truth, and an img2dataset-style URL list.

    <out>/www/                   the document root the server serves
        index.html, robots.txt (disallows /private/), sitemap.xml
        gallery/page-N.html      public pages, paginated; private/page-N.html behind robots.txt
        img/, private/img/       scenes, their near-duplicates and srcset variants; hostile files (see FAULTS)
        _payload/                images the server sends only through a fault URL (slow, 429, short read)
    <out>/ground_truth.jsonl     one record per image URL path the pages reference (see `render_site`)
    <out>/site.json              seed, counts and the fault table the server implements

Pages may contain `__BASE_URL__`; the server replaces it with its own base URL (absolute links, the sitemap).
"""
from __future__ import annotations

import hashlib
import html
import io
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from curation.synthweb.alttext import make_alt_text
from curation.synthweb.hostile import (
    decompression_bomb_png,
    html_disguised_as_image,
    jpeg_bytes,
    near_duplicate,
    transform_persons,
    truncated_jpeg,
)
from curation.synthweb.identities import clean_caption, identity_attributes
from curation.synthweb.scene import NEGATIVE_PLANS, Scene, render_scene
from curation.synthweb.verdicts import expected_verdict
from storage.errors import GadmsError, check_range
from storage.fs import refuse_file
from storage.jsonl import read_jsonl

BASE_URL_PLACEHOLDER = "__BASE_URL__"
IMAGES_PER_PAGE = 12
PRIVATE_SHARE = 16  # one scene in 16 goes to the robots-disallowed section
DUPLICATE_EVERY = 20  # one scene in 20 gets a duplicate, kinds in turn
DUPLICATE_KINDS = (("exact", 0), ("reencoded", 40), ("resized", 0.75), ("cropped", 3), ("mirrored", 0))
# One scene in 20 is the filter's work (scene.NEGATIVE_PLANS in turn): few enough that the kept count barely moves.
NEGATIVE_EVERY = 20
NEGATIVE_OFFSET = 7  # not a scene that gets a duplicate (i % 20 == 10)
MAX_SCENES = 1_000_000
BYTES_PER_SCENE = 64_000  # a scene with its variants and pages takes ~40 kB; the bound keeps a margin
TRANSPARENT_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"

# URL path → what the server does there. "file" is the document-root file served when it answers with an image.
FAULTS: dict[str, dict] = {
    "/img/truncated.jpg": {"fault": "truncated_jpeg", "status": 200},
    "/img/not-an-image.jpg": {"fault": "html_as_jpeg", "status": 200},
    "/img/huge.png": {"fault": "decompression_bomb", "status": 200},
    "/img/missing.jpg": {"fault": "http_404", "status": 404},
    "/img/noai.jpg": {"fault": "noai", "status": 200},
    "/slow/photo.jpg": {"fault": "slow", "status": 200},
    "/loop/a.jpg": {"fault": "redirect_loop", "status": 302, "location": "/loop/b.jpg"},
    "/loop/b.jpg": {"fault": "redirect_loop", "status": 302, "location": "/loop/a.jpg"},
    "/moved/photo.jpg": {"fault": "redirect", "status": 301},
    "/fault/error.jpg": {"fault": "http_500", "status": 500},
    "/fault/busy.jpg": {"fault": "rate_limited", "status": 429, "retry_after": 1, "times": 2},
    "/fault/short-read.jpg": {"fault": "short_read", "status": 200},
}


@dataclass(frozen=True)
class SiteInfo:
    root: Path
    docroot: Path
    ground_truth: Path
    seed: int
    scenes: int
    records: int  # ground-truth records: scenes, duplicates, srcset variants and hostile URLs
    pages: int  # HTML gallery pages, public and private
    faults: dict


def _persons_record(scene: Scene) -> list[dict]:
    return [
        {
            "bbox": list(p.bbox),
            "keypoints": [list(k) for k in p.keypoints],
            "identity": p.identity,
            "kind": p.kind,
            "caption": clean_caption(identity_attributes(p.identity)) if p.identity is not None else None,
            "expected_verdict": expected_verdict(
                p.kind, p.bbox, [(o.kind, o.bbox) for o in scene.persons if o is not p], scene.image.size),
        }
        for p in scene.persons
    ]


def _record(path: str, data: bytes | None, size, scene: Scene | None, alt, **extra) -> dict:
    record = {
        "path": path,
        "pages": [],
        "sha256": hashlib.sha256(data).hexdigest() if data is not None else None,
        "width": size[0] if size else None,
        "height": size[1] if size else None,
        "plan": scene.plan if scene else None,
        "persons": _persons_record(scene) if scene else [],
        "alt_text": alt.text,
        "alt_style": alt.style,
        "noise_words": list(alt.noise_words),
        "robots_disallowed": path.startswith("/private/"),
        "duplicate_of": None,
        "duplicate_kind": None,
        "fault": None,
        "http_status": 200,
    }
    record.update(extra)
    return record


def _write(docroot: Path, path: str, data: bytes) -> None:
    target = docroot / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def render_site(out_dir: str | Path, images: int, seed: int) -> SiteInfo:
    """Render `images` scenes into a static site under `out_dir` (created; must be empty or absent).

    Ground-truth records: `path` (URL path), `pages` (pages that reference it), `sha256`, `width`, `height`,
    `plan`, `persons` [{bbox x1,y1,x2,y2; keypoints 17 × [x, y, visibility] in COCO order; identity (None for a
    figure that depicts no one); kind (see curation.synthweb.scene); caption (the clean description, None
    without identity); expected_verdict (what the MLLM filter should answer for its crop,
    curation.synthweb.verdicts)}], `alt_text` with `alt_style` and `noise_words` (one flag per word of
    alt_text.split()), `robots_disallowed`, `duplicate_of`/`duplicate_kind` (exact, reencoded, resized, cropped,
    mirrored; boxes and keypoints transformed to match), `fault` (None or a FAULTS name), `http_status` (of the
    first response) and, on scenes that have a half-size variant, `srcset_small` (its path; the page's `<img>`
    then uses it as `src` and lists both in `srcset`).
    """
    check_range("--images", images, 1, MAX_SCENES)
    root = Path(out_dir)
    refuse_file(str(root), "site folder")
    if root.exists() and any(root.iterdir()):
        raise GadmsError(f"{root}: output folder is not empty; choose a new folder for the site")
    existing = next(p for p in [root, *root.resolve().parents] if p.exists())
    free = shutil.disk_usage(existing).free
    if images * BYTES_PER_SCENE > free:
        raise GadmsError(f"{root}: {images} scenes need about {images * BYTES_PER_SCENE / 1e6:,.0f} MB, "
                         f"{free / 1e6:,.0f} MB are free there")
    docroot = root / "www"
    docroot.mkdir(parents=True)
    identities = list(range(max(4, images // 4)))
    records: list[dict] = []
    public: list[dict] = []
    private: list[dict] = []
    late: list[dict] = []  # duplicates, listed after their originals so a crawler meets the original first

    for i in range(images):
        rng = random.Random(f"synthweb-site-{seed}-{i}")
        negative = i % NEGATIVE_EVERY == NEGATIVE_OFFSET
        plan = NEGATIVE_PLANS[(i // NEGATIVE_EVERY) % len(NEGATIVE_PLANS)] if negative else None
        scene = render_scene(rng, seed, identities, plan)
        number = scene.main_identity
        alt = make_alt_text(identity_attributes(number) if number is not None else None, rng)
        is_private = rng.randrange(PRIVATE_SHARE) == 0
        path = f"/private/img/s{i:05d}.jpg" if is_private else f"/img/s{i:05d}.jpg"
        data = jpeg_bytes(scene.image)
        _write(docroot, path, data)
        record = _record(path, data, scene.image.size, scene, alt)
        records.append(record)
        (private if is_private else public).append(record)
        if i % DUPLICATE_EVERY == DUPLICATE_EVERY // 2 and not is_private:
            kind, amount = DUPLICATE_KINDS[(i // DUPLICATE_EVERY) % len(DUPLICATE_KINDS)]
            dup_data = data if kind == "exact" else near_duplicate(scene.image, kind, amount)
            dup_path = f"/img/s{i:05d}-{kind}.jpg"
            _write(docroot, dup_path, dup_data)
            dup = _record(dup_path, dup_data, None, scene, alt, duplicate_of=path, duplicate_kind=kind)
            dup["persons"] = transform_persons(record["persons"], kind, scene.image.size, amount)
            dup["width"], dup["height"] = _jpeg_size(dup_data)
            records.append(dup)
            late.append(dup)
        if i % 6 == 3 and not is_private:  # srcset: a half-size variant as `src`, the full image as 2x
            small_path = f"/img/s{i:05d}-w{scene.image.width // 2}.jpg"
            small_data = near_duplicate(scene.image, "resized", 0.5)
            _write(docroot, small_path, small_data)
            small = _record(small_path, small_data, None, scene, alt, duplicate_of=path, duplicate_kind="resized")
            small["persons"] = transform_persons(record["persons"], "resized", scene.image.size, 0.5)
            small["width"], small["height"] = _jpeg_size(small_data)
            record["srcset_small"] = small_path
            small["pages"] = record["pages"]  # the same list: filled when the parent's page is written
            records.append(small)

    public_records = _hostile_records(docroot, seed, identities, public[0] if public else records[0])
    records += public_records
    # Hostile URLs are spread over the public pages, duplicates go at the end.
    listing = list(public)
    for k, record in enumerate(public_records):
        listing.insert(min(len(listing), 1 + k * max(1, len(public) // len(public_records))), record)
    listing += late
    if public:  # the same URL referenced twice: the first scene again on the last page
        listing.append(public[0])

    public_pages = _write_pages(docroot, "gallery", listing)
    private_pages = _write_pages(docroot, "private", private)
    _write_index(docroot, public_pages, private_pages)
    (docroot / "robots.txt").write_text(
        f"User-agent: *\nDisallow: /private/\n\nSitemap: {BASE_URL_PLACEHOLDER}/sitemap.xml\n", encoding="utf-8")
    urls = "".join(f"  <url><loc>{BASE_URL_PLACEHOLDER}{p}</loc></url>\n" for p in ["/index.html"] + public_pages)
    (docroot / "sitemap.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n{urls}</urlset>\n', encoding="utf-8")

    faults = {path: dict(spec) for path, spec in FAULTS.items()}
    for record in public_records:
        if "payload" in record:
            faults[record["path"]]["file"] = record.pop("payload")
        if record["fault"] == "redirect":
            faults[record["path"]]["location"] = record["duplicate_of"]
    ground_truth = root / "ground_truth.jsonl"
    with ground_truth.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    info = SiteInfo(root, docroot, ground_truth, seed, images, len(records),
                    len(public_pages) + len(private_pages), faults)
    (root / "site.json").write_text(json.dumps(
        {"seed": seed, "scenes": images, "records": len(records), "pages": info.pages, "faults": faults},
        indent=1), encoding="utf-8")
    return info


def _jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _hostile_records(docroot: Path, seed: int, identities: list[int], redirect_target: dict) -> list[dict]:
    """Render the scenes behind the hostile URLs and write their files; one ground-truth record per URL.

    A fault that answers with an image after a delay, a retry or cut short serves a payload file kept under
    /_payload/, which the server never serves by its own path."""
    out = []
    for k, (path, spec) in enumerate(FAULTS.items()):
        rng = random.Random(f"synthweb-hostile-{seed}-{k}")
        scene = render_scene(rng, seed, identities, plan="single")
        alt = make_alt_text(identity_attributes(scene.main_identity), rng)
        full = jpeg_bytes(scene.image)
        fault = spec["fault"]
        payload = f"/_payload/{path.strip('/').replace('/', '-')}"
        if fault == "truncated_jpeg":
            _write(docroot, path, truncated_jpeg(full))
            record = _record(path, truncated_jpeg(full), scene.image.size, scene, alt)
        elif fault == "html_as_jpeg":
            _write(docroot, path, html_disguised_as_image())
            record = _record(path, html_disguised_as_image(), None, None, alt)
        elif fault == "decompression_bomb":
            bomb = decompression_bomb_png()
            _write(docroot, path, bomb)
            record = _record(path, bomb, None, None, alt)
        elif fault == "noai":
            _write(docroot, path, full)
            record = _record(path, full, scene.image.size, scene, alt)
        elif fault == "redirect":
            record = {**redirect_target, "path": path, "pages": [], "duplicate_of": redirect_target["path"],
                      "duplicate_kind": "exact"}
            record.pop("srcset_small", None)
        elif fault in ("slow", "rate_limited", "short_read"):
            _write(docroot, payload, full)  # served by the server under the fault's URL, never linked
            record = _record(path, full, scene.image.size, scene, alt, payload=payload)
        else:  # 404, 500, redirect loop: no image ever arrives
            record = _record(path, None, None, None, alt)
        record["fault"] = fault
        record["http_status"] = spec["status"]
        out.append(record)
    return out


def _img_tag(record: dict, page_dir: str, position: int) -> str:
    """One of the ways the web writes an image tag: srcset where a variant exists, else chosen by position."""
    path = record["path"]
    alt = html.escape(record["alt_text"], quote=True)
    relative = "../" * page_dir.count("/") + "../" + path.lstrip("/")
    if record.get("srcset_small"):  # scenes with a half-size variant always use srcset
        small = record["srcset_small"]
        return f'<img src="{small}" srcset="{small} 1x, {path} 2x" alt="{alt}">'
    style = position % 6
    if style == 0:
        return f'<img src="{relative}" alt="{alt}">'
    if style == 1:
        return f'<img src="{path}" alt="{alt}" width="{record["width"] or ""}">'
    if style == 2:
        return f'<img alt="{alt}" src="{BASE_URL_PLACEHOLDER}{path}">'
    if style in (3, 4):
        return f'<img src="{TRANSPARENT_GIF}" data-src="{relative}" loading="lazy" class="lazy" alt="{alt}">'
    return f'<IMG SRC={path} ALT="{alt}">'


def _write_pages(docroot: Path, section: str, listing: list[dict]) -> list[str]:
    chunks = [listing[i:i + IMAGES_PER_PAGE] for i in range(0, len(listing), IMAGES_PER_PAGE)] or [[]]
    paths = [f"/{section}/page-{n + 1}.html" for n in range(len(chunks))]
    for n, chunk in enumerate(chunks):
        nav = []
        if n > 0:
            nav.append(f'<a rel="prev" href="page-{n}.html">previous</a>')
        nav += [f'<a href="page-{m + 1}.html">{m + 1}</a>' for m in range(len(chunks)) if m != n]
        if n + 1 < len(chunks):
            nav.append(f'<a rel="next" href="page-{n + 2}.html">next</a>')
        figures = []
        for position, record in enumerate(chunk):
            record["pages"].append(paths[n])
            figures.append(f"<figure>{_img_tag(record, section, position)}</figure>")
        body = "\n".join(figures)
        page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{section} {n + 1}</title></head>\n'
                f'<body>\n<nav>{" ".join(nav)}</nav>\n<main>\n{body}\n</main>\n'
                f'<footer><a href="/index.html">home</a> <a href="/gallery/missing-page.html">archive</a></footer>'
                f"\n</body></html>\n")
        _write(docroot, paths[n], page.encode("utf-8"))
    return paths


def _write_index(docroot: Path, public_pages: list[str], private_pages: list[str]) -> None:
    links = [f'<a href="{public_pages[0]}">Street photo gallery</a>',
             f'<a href="{BASE_URL_PLACEHOLDER}/sitemap.xml">sitemap</a>']
    if private_pages and docroot.joinpath("private").exists():
        links.append(f'<a href="{private_pages[0]}">members only</a>')
    page = ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Synthetic street style</title></head>\n'
            f'<body>\n<h1>Synthetic street style</h1>\n<p>{" | ".join(links)}</p>\n</body></html>\n')
    _write(docroot, "/index.html", page.encode("utf-8"))


# The ground-truth fields readers use, and their types: a damaged file is one error naming its line.
_GROUND_TRUTH_FIELDS = {"path": str, "alt_text": str, "pages": list, "persons": list}


def read_ground_truth(site_dir: str | Path) -> list[tuple[str, dict]]:
    """The records of a rendered site's ground_truth.jsonl, each with its `file:line` for error messages."""
    ground_truth = Path(site_dir) / "ground_truth.jsonl"
    if not ground_truth.is_file():
        raise GadmsError(f"{site_dir}: no ground_truth.jsonl here; render a site with `gadms synthweb render`")
    records = []
    for number, record in read_jsonl(ground_truth):
        where = f"{ground_truth}:{number}"
        for name, kind in _GROUND_TRUTH_FIELDS.items():
            if not isinstance(record.get(name), kind):
                raise GadmsError(f"{where}: field {name!r} must be a {kind.__name__}")
        records.append((where, record))
    return records


def write_url_list(site_dir: str | Path, base_url: str, out_path: str | Path) -> int:
    """Write every image URL the site's pages reference, with its alt text as caption, as an img2dataset input
    list (`url`, `caption`, `page_url`); Parquet or JSON Lines by the suffix of `out_path`. Returns the rows."""
    from curation.crawl.fetcher import check_http_url

    site_dir, out_path = Path(site_dir), Path(out_path)
    check_http_url(base_url, "--base-url")
    records = read_ground_truth(site_dir)
    if out_path.suffix not in (".parquet", ".jsonl"):
        raise GadmsError(f"{out_path}: URL list must end in .parquet or .jsonl")
    base = base_url.rstrip("/")
    rows = []
    for _, record in records:
        if not record["pages"]:
            continue
        rows.append({"url": base + record["path"], "caption": record["alt_text"],
                     "page_url": base + record["pages"][0]})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(
            [("url", pa.string()), ("caption", pa.string()), ("page_url", pa.string())])), out_path)
    else:
        with out_path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)
