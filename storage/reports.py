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


def contact_sheet(
    images: list[bytes], captions: list[str], path: str | Path, columns: int = 4, thumb=(96, 192), text_width=30,
    titles: list[str] | None = None,
) -> Path:
    """Thumbnails in a grid with the caption (and an optional title line) under each; saved as PNG."""
    font = ImageFont.load_default()
    lines_per_caption = 6
    cell_w, cell_h = max(thumb[0], text_width * 6) + 10, thumb[1] + 12 * (lines_per_caption + 1) + 10
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (cell_w * columns, cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (data, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w + 5, (i // columns) * cell_h + 5
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail(thumb)
            sheet.paste(image, (x, y))
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
