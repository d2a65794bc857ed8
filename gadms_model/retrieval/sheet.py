"""A PNG contact sheet of search results: the top-k crops in a row-major grid, each labelled with its rank,
score and id."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TILE = (128, 256)  # width, height of one crop
LABEL_HEIGHT = 30
COLUMNS = 5


def contact_sheet(query: str, results: list[tuple[Image.Image, float, str]], path: str | Path) -> Path:
    """Write `results` (image, score, id), best first, under a title line with the query."""
    font = ImageFont.load_default()
    rows = max(1, -(-len(results) // COLUMNS))
    columns = min(COLUMNS, max(len(results), 1))
    title_height = 24
    sheet = Image.new("RGB", (columns * TILE[0], title_height + rows * (TILE[1] + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 6), query[:120], fill="black", font=font)
    for rank, (image, score, item_id) in enumerate(results, start=1):
        column, row = (rank - 1) % COLUMNS, (rank - 1) // COLUMNS
        x, y = column * TILE[0], title_height + row * (TILE[1] + LABEL_HEIGHT)
        crop = image.copy()
        crop.thumbnail(TILE)
        sheet.paste(crop, (x + (TILE[0] - crop.width) // 2, y + (TILE[1] - crop.height) // 2))
        draw.text((x + 3, y + TILE[1] + 2), f"#{rank}  {score:.3f}", fill="black", font=font)
        draw.text((x + 3, y + TILE[1] + 15), item_id[-20:], fill="gray", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
