"""Pictures of a catalog for people: the caption-length histogram and a contact sheet of crops with captions."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import duckdb
from PIL import Image, ImageDraw, ImageFont

from storage.stats import caption_length_histogram


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def caption_length_histogram_png(con: duckdb.DuckDBPyConnection, path: str | Path, bin_words: int = 5) -> Path:
    """A bar chart of caption lengths in words (both captions of every sample)."""
    plt = _pyplot()
    histogram = caption_length_histogram(con, bin_words)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.bar([b["from"] for b in histogram], [b["count"] for b in histogram], width=bin_words * 0.9, align="edge")
    ax.set_xlabel("caption length (words)")
    ax.set_ylabel("captions")
    ax.set_title("WebPerson caption lengths")
    return _save_figure(fig, path)


HEADING_HEIGHT = 24


def contact_sheet(
    images: list[bytes | Image.Image], captions: list[str], path: str | Path, columns: int = 4, thumb=(96, 192),
    text_width=30, titles: list[str] | None = None, heading: str | None = None, lines_per_caption: int = 6,
) -> Path:
    """Thumbnails (encoded bytes or PIL images) in a grid, each with an optional title line and its caption
    under it, below an optional heading line; saved as PNG. Crops, reject samples and search results use it."""
    font = ImageFont.load_default()
    cell_w, cell_h = max(thumb[0], text_width * 6) + 10, thumb[1] + 12 * (lines_per_caption + 1) + 10
    rows = max(1, -(-len(images) // columns))
    top = HEADING_HEIGHT if heading is not None else 0
    sheet = Image.new("RGB", (cell_w * columns, top + cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    if heading is not None:
        draw.text((4, 6), heading[:120], fill="black", font=font)
    for i, (data, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w + 5, top + (i // columns) * cell_h + 5
        image = data.convert("RGB") if isinstance(data, Image.Image) else _decoded(data)
        image.thumbnail(thumb)
        sheet.paste(image, (x + (thumb[0] - image.width) // 2, y))
        text_y = y + thumb[1] + 4
        if titles:
            draw.text((x, text_y), titles[i], fill=(160, 0, 0), font=font)
            text_y += 12
        for line in textwrap.wrap(caption, text_width)[:lines_per_caption]:
            draw.text((x, text_y), line, fill=(0, 0, 0), font=font)
            text_y += 12
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def sample_contact_sheet_png(con: duckdb.DuckDBPyConnection, path: str | Path, samples: int = 12) -> Path:
    """A reproducible pseudo-random sample of crops (ordered by a hash of their id) with their first caption."""
    rows = con.execute("SELECT image, caption1 FROM samples ORDER BY md5(sample_id) LIMIT ?", [samples]).fetchall()
    return contact_sheet([r[0] for r in rows], [r[1] for r in rows], path)


def loss_curves_png(metrics_jsonl: str | Path, path: str | Path) -> Path:
    """Loss terms per step from a training run's JSONL metrics file (records with "step" and loss keys)."""
    from storage.jsonl import read_jsonl

    plt = _pyplot()
    series: dict[str, list[tuple[int, float]]] = {}
    for _, record in read_jsonl(metrics_jsonl):
        if "step" not in record:
            continue
        for key, value in record.items():
            if (key == "loss" or key.startswith("loss_") or key in ("sdm", "mtp", "id", "mlm")) and isinstance(value, (int, float)):
                series.setdefault(key, []).append((record["step"], value))
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    for key, points in sorted(series.items()):
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if series:
        ax.legend()
    return _save_figure(fig, path)
