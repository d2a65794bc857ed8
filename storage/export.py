"""Export complete shards to the public WebPerson layout, as WebPerson-5M is published on the Hugging Face Hub.

    <out>/data/train-NNNNN-of-MMMMM.parquet   one file per complete shard (PUBLIC_SCHEMA: the `datasets`
                                              Image struct and the `huggingface` feature metadata)
    <out>/README.md                           the dataset card (storage.dataset_card)

`image_path` is `images/<sample_id>.jpg`, the name the crop would have in the authors' JSON + images/ layout.
gadms_model.data.public_parquet_source reads this layout back (with storage.public's checks). With `blur_faces`,
the face boxes the detect stage stored (`face_boxes`) are blurred in the exported JPEGs; crops without faces are
exported byte for byte.
A sample that a takedown list matches (the lists applied to the root under
`<root>/takedown/`, and any given) is never written.
"""
from __future__ import annotations

import io
import math
import re

import pyarrow as pa
from PIL import Image, ImageFilter

from storage.dataset_card import SplitSize, dataset_card
from storage.errors import GadmsError
from storage.fs import atomic_write, filesystem, is_within, join
from storage.layout import OutputLayout
from storage.schema import HF_IMAGE_TYPE, PUBLIC_SCHEMA
from storage.shards import complete_shards, read_shard, write_parquet_atomic
from storage.takedown import MATCH_COLUMNS, NEAR_DUPLICATE_RADIUS, effective_takedown_list

_DATA_FILE = re.compile(r"train-\d{5}-of-\d{5}\.parquet")
# Hub license ids are lower case (cc-by-4.0, apache-2.0, other); anything else would go into the YAML header.
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]*")


def public_image_path(sample_id: str) -> str:
    return f"images/{sample_id}.jpg"


def data_file_name(index: int, count: int) -> str:
    return f"train-{index:05d}-of-{count:05d}.parquet"


# Re-encoding a blurred crop: 4:4:4 (no chroma subsampling), so every 8 × 8 block the blur does not touch decodes
# as the same crop re-encoded without blurring (subsampled chroma would spread the change 16 px and more).
BLURRED_JPEG_QUALITY = 90
# Gaussian radius as a share of the face box's longer side: enough that no facial feature stays recognisable.
BLUR_RADIUS_SHARE = 0.25


def blur_boxes(jpeg: bytes, boxes: list[list[float]]) -> bytes:
    """`jpeg` with each [x1, y1, x2, y2] box (pixels) Gaussian-blurred within the box, re-encoded: outside the
    boxes the pixels change only as much as one more JPEG encoding changes them."""
    with Image.open(io.BytesIO(jpeg)) as decoded:
        image = decoded.convert("RGB")
    for x1, y1, x2, y2 in boxes:
        region = (max(0, math.floor(x1)), max(0, math.floor(y1)),
                  min(image.width, math.ceil(x2)), min(image.height, math.ceil(y2)))
        if region[2] <= region[0] or region[3] <= region[1]:
            continue
        radius = max(2.0, BLUR_RADIUS_SHARE * max(region[2] - region[0], region[3] - region[1]))
        image.paste(image.crop(region).filter(ImageFilter.GaussianBlur(radius)), region[:2])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=BLURRED_JPEG_QUALITY, subsampling=0)
    return buffer.getvalue()


def public_table(shard: pa.Table, blur_faces: bool = False) -> pa.Table:
    """Shard rows (sample_id, image, caption1, caption2; face_boxes with `blur_faces`) as a PUBLIC_SCHEMA table."""
    jpeg = shard["image"].combine_chunks()
    if blur_faces:
        jpeg = pa.array([image if not boxes else blur_boxes(image, boxes)
                         for image, boxes in zip(jpeg.to_pylist(), shard["face_boxes"].to_pylist())], pa.binary())
    image = pa.StructArray.from_arrays([jpeg, pa.nulls(len(jpeg), pa.string())], fields=list(HF_IMAGE_TYPE))
    paths = pa.array([public_image_path(s) for s in shard["sample_id"].to_pylist()], pa.string())
    return pa.table([image, paths, shard["caption1"], shard["caption2"]], schema=PUBLIC_SCHEMA)


def export_public(root: str, out_dir: str, license: str | None = None, blur_faces: bool = False,
                  takedown_lists: tuple[str, ...] = (), radius: int = NEAR_DUPLICATE_RADIUS) -> list[str]:
    """Write the Hub layout of `root`'s complete shards into `out_dir`; return the data files' paths.

    Each file is written atomically; data files of an earlier export that this one does not rewrite are removed,
    so the folder holds exactly one export. `license` is a Hub license id; None leaves it unknown in the card.
    `blur_faces` blurs the stored face boxes; a shard whose faces were never counted (schema v1, or
    `face_count: false`) is an error before anything is written, since its faces could not be blurred.
    Rows matched by the root's applied takedown lists or by `takedown_lists` (pHash entries within `radius`) are
    left out.
    """
    if license is not None and not _LICENSE.fullmatch(license):
        raise GadmsError(f"--license {license!r}: not a Hugging Face license id (e.g. cc-by-4.0, other)")
    layout = OutputLayout(root)
    data_dir, card_path = join(out_dir, "data"), join(out_dir, "README.md")
    if is_within(data_dir, root) or is_within(card_path, root):
        raise GadmsError(f"{out_dir}: inside the output root {root}; export to a folder outside it")
    takedown = effective_takedown_list(root, takedown_lists)  # a bad list fails before anything is written
    entries = complete_shards(layout)
    if not entries:
        raise GadmsError(f"{layout.manifest_dir}: no complete shards to export (not a WebPerson output root?)")
    if blur_faces:
        for entry in entries:
            _require_counted_faces(layout.shard_path(entry["shard_id"]))
    columns = ["image", "caption1", "caption2", *MATCH_COLUMNS, *(["face_boxes"] if blur_faces else [])]
    written, rows, num_bytes, download_size = [], 0, 0, 0
    for index, entry in enumerate(entries):
        shard = read_shard(layout.shard_path(entry["shard_id"]), columns=columns)
        if len(takedown):
            shard = shard.filter(pa.array([m is None for m in takedown.table_matches(shard, radius)], pa.bool_()))
        table = public_table(shard, blur_faces)
        path = join(data_dir, data_file_name(index, len(entries)))
        download_size += write_parquet_atomic(table, path)["bytes"]
        rows, num_bytes = rows + table.num_rows, num_bytes + table.nbytes
        written.append(path)
    _remove_stale_data_files(data_dir, {p.rsplit("/", 1)[-1] for p in written})
    card = dataset_card(layout, SplitSize(rows, num_bytes, download_size), license, blur_faces)
    with atomic_write(card_path, "w") as f:
        f.write(card)
    return written


def _require_counted_faces(path: str) -> None:
    counts = read_shard(path, columns=["num_faces"]).column("num_faces")
    if counts.null_count:
        raise GadmsError(f"{path}: {counts.null_count} sample(s) without a face count (a shard of schema v1 or "
                         "built with detect.face_count: false), so --blur-faces cannot blur them; rebuild the shard "
                         "(delete its manifest entry and rerun gadms build) or export without --blur-faces")


def _remove_stale_data_files(data_dir: str, keep: set[str]) -> None:
    fs, p = filesystem(data_dir)
    for name in fs.ls(p, detail=False):
        base = name.rsplit("/", 1)[-1]
        if _DATA_FILE.fullmatch(base) and base not in keep:
            fs.rm(name)
