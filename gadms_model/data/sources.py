"""Training pair sources: (image, caption, pid) triples addressed by a pair index that doubles as caption id.

- `ShardSource`: WebPerson shards of an output root (only shards with a `complete` manifest entry), or the
  public WebPerson Parquet release (image, image_path, caption1, caption2; `image` as the Hugging Face Image
  struct or plain bytes, see storage.public). One pid per image; its two captions are pairs 2i and 2i+1 and
  share it. Reads whole Parquet row groups and keeps the most recent few (as many as the sampler shuffles
  together), so `BlockShuffleSampler` streams through large datasets.
- `JsonImageSource`: the authors' JSON list of {"<image file>": {"caption1", "caption2"}} with `images/`.
- `BenchmarkSource`: the train split of a public benchmark (identity pids, one pair per caption).
"""
from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from gadms_model.data.benchmarks import TrainSample
from storage.catalog import catalog_root
from storage.errors import GadmsError
from storage.images import DEFAULT_MAX_PIXELS, DecodeError, decode_rgb
from storage.fs import filesystem
from storage.layout import OutputLayout
from storage.public import check_columns, image_bytes, public_files
from storage.shards import check_shard_footer, complete_shards


class DataSourceError(GadmsError):
    pass


def decode_image(data: bytes, where: str) -> Image.Image:
    try:
        return decode_rgb(data, DEFAULT_MAX_PIXELS)
    except DecodeError as exc:
        raise DataSourceError(f"{where}: image cannot be decoded: {exc.detail}") from None


def open_image(path: str, where: str) -> Image.Image:
    """A benchmark or gallery image file, decoded as shard images are (pixel limit, EXIF orientation, and around
    ultralytics' Image.open wrapper, which would try to install a plugin for an unidentified file)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataSourceError(f"{where}: image not found") from None
    except OSError as exc:
        raise DataSourceError(f"{where}: image cannot be read: {exc.strerror or exc}") from None
    return decode_image(data, where)


@dataclass(frozen=True)
class Pair:
    image: Image.Image
    caption: str
    pid: int


@dataclass(frozen=True)
class _RowGroup:
    path: str
    index: int
    first_image: int
    num_rows: int


class ShardSource:
    """Images with two captions each, from Parquet files; pair i = (image i // 2, caption i % 2 + 1)."""

    captions_per_image = 2

    def __init__(self, files: list[str], id_column: str, cached_row_groups: int = 8,
                 manifest: tuple[OutputLayout, dict[str, dict]] | None = None):
        """`manifest`: the output root and the manifest entry of each of `files` (by path). A file whose entry
        records its row groups is laid out from it without opening the file, and its footer is checked
        against the entry (storage.shards.check_shard_footer) each time it is opened to read."""
        if not files:
            raise DataSourceError("no Parquet files to read")
        self.files = files
        self.id_column = id_column
        self.manifest = manifest
        self.row_groups: list[_RowGroup] = []
        first_image = 0
        for path in files:
            entry = manifest[1][path] if manifest else {}
            if "row_groups" in entry:
                group_rows = entry["row_groups"]
            else:
                metadata = self._open(path).metadata
                group_rows = [metadata.row_group(index).num_rows for index in range(metadata.num_row_groups)]
            for index, rows in enumerate(group_rows):
                if rows:
                    self.row_groups.append(_RowGroup(path, index, first_image, rows))
                    first_image += rows
        self.num_images = first_image
        self._starts = [group.first_image for group in self.row_groups]
        self.cached_row_groups = cached_row_groups
        self._cache: OrderedDict[_RowGroup, dict] = OrderedDict()

    def _open(self, path: str) -> pq.ParquetFile:
        fs, fs_path = filesystem(path)
        try:
            parquet = pq.ParquetFile(fs.open(fs_path, "rb"))
        except FileNotFoundError:
            raise DataSourceError(f"{path}: shard file not found") from None
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataSourceError(f"{path}: not a readable Parquet file: {exc}") from None
        if self.manifest:
            layout, entries = self.manifest
            check_shard_footer(layout, entries[path], parquet)
        check_columns(parquet.schema_arrow, path, ("image", "caption1", "caption2", self.id_column))
        return parquet

    @property
    def num_pairs(self) -> int:
        return self.num_images * self.captions_per_image

    @property
    def num_classes(self) -> int:
        return self.num_images

    def blocks(self) -> list[tuple[int, int]]:
        """Pair-index ranges that share one row group (the sampler's unit of locality)."""
        return [(2 * g.first_image, 2 * (g.first_image + g.num_rows)) for g in self.row_groups]

    def _row_group(self, group: _RowGroup) -> dict:
        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        table = self._open(group.path).read_row_group(group.index, columns=["image", "caption1", "caption2", self.id_column])
        rows = {name: table.column(name).to_pylist() for name in ("caption1", "caption2", self.id_column)}
        rows["image"] = image_bytes(table.column("image"), f"{group.path}: row group {group.index}")
        self._cache[group] = rows
        while len(self._cache) > self.cached_row_groups:
            self._cache.popitem(last=False)
        return self._cache[group]

    def sample_id(self, image_index: int) -> str:
        group = self.row_groups[bisect.bisect_right(self._starts, image_index) - 1]
        return self._row_group(group)[self.id_column][image_index - group.first_image]

    def _pair_row(self, pair_index: int) -> tuple[dict, int, str, str]:
        """The rows of the pair's row group, its row there, where that is (for errors) and the pair's caption."""
        image_index, caption_index = divmod(pair_index, 2)
        group = self.row_groups[bisect.bisect_right(self._starts, image_index) - 1]
        rows = self._row_group(group)
        row = image_index - group.first_image
        where = f"{group.path}: row {group.index}:{row} ({self.id_column} {rows[self.id_column][row]!r})"
        caption = rows[f"caption{caption_index + 1}"][row]
        if not caption and caption_index == 1:
            # One-caption samples (the alt-text captioner writes caption2 = ""): the second pair repeats the first.
            caption = rows["caption1"][row]
        if not caption:
            raise DataSourceError(f"{where}: empty caption{caption_index + 1}")
        return rows, row, where, caption

    def raw_pair(self, pair_index: int) -> tuple[bytes, str, str]:
        """Pair `pair_index` as stored: the image's bytes (not decoded), the caption and the sample's id."""
        rows, row, _, caption = self._pair_row(pair_index)
        return rows["image"][row], caption, rows[self.id_column][row]

    def __getitem__(self, pair_index: int) -> Pair:
        rows, row, where, caption = self._pair_row(pair_index)
        return Pair(decode_image(rows["image"][row], where), caption, pair_index // 2)

    def __getstate__(self):
        # DataLoader workers each keep their own row-group cache.
        return {**self.__dict__, "_cache": OrderedDict()}


def webperson_shard_files(root: str) -> tuple[OutputLayout, dict[str, dict]]:
    """The shards of a WebPerson output root that have a `complete` manifest entry, in shard-id order, as
    (layout, {shard path: manifest entry}); their sizes checked from one listing (storage.shards.complete_shards
    without footers: ShardSource checks each footer when it opens the shard)."""
    layout = OutputLayout(str(root))
    entries = complete_shards(layout, read_footers=False)
    if not entries:
        raise DataSourceError(f"{layout.manifest_dir}: no complete shards (not a WebPerson output root?)")
    return layout, {layout.shard_path(entry["shard_id"]): entry for entry in entries}


def webperson_source(root: str) -> ShardSource:
    """A WebPerson output root, or its catalog file `<root>/catalog.duckdb`: the root it was built for when the
    file exists (so a file that is not a catalog says so), else the folder it would be in."""
    root = str(root)
    if root.endswith(".duckdb"):
        root = catalog_root(root) if Path(root).exists() else str(Path(root).parent)
    # Sizes checked now from one listing, each footer when its shard is first read: the manifest entries hold
    # the row counts, so start-up opens no shard that records them.
    layout, entries = webperson_shard_files(root)
    return ShardSource(list(entries), id_column="sample_id", manifest=(layout, entries))


def public_parquet_source(path: str) -> ShardSource:
    """The public release (storage.public): a Parquet file, or a folder with them, e.g. a Hub repository."""
    files = public_files(path)
    if not files:
        raise DataSourceError(f"{path}: no .parquet files")
    return ShardSource(files, id_column="image_path")


class JsonImageSource:
    """The authors' JSON layout: a list of {"<image file>": {"caption1": ..., "caption2": ...}}, images/ beside it."""

    captions_per_image = 2

    def __init__(self, annotation_file: str):
        path = Path(annotation_file)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataSourceError(f"{path}: annotation file not found") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DataSourceError(f"{path}: not valid JSON: {exc}") from None
        entries = data if isinstance(data, list) else [data]
        images_dir = path.parent / "images"
        self.items: list[tuple[str, str, str]] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise DataSourceError(f"{path}: record {index}: expected an object")
            for name, captions in entry.items():
                where = f"{path}: record {index} ({name!r})"
                if not isinstance(captions, dict) or not all(
                    isinstance(captions.get(k), str) and captions[k] for k in ("caption1", "caption2")
                ):
                    raise DataSourceError(f"{where}: needs non-empty 'caption1' and 'caption2'")
                image_path = images_dir / name
                if ".." in Path(name).parts or not image_path.is_file():
                    raise DataSourceError(f"{where}: image not found under {images_dir}")
                self.items.append((str(image_path), captions["caption1"], captions["caption2"]))
        if not self.items:
            raise DataSourceError(f"{path}: no records")
        self.num_images = len(self.items)

    @property
    def num_pairs(self) -> int:
        return 2 * self.num_images

    @property
    def num_classes(self) -> int:
        return self.num_images

    def blocks(self) -> list[tuple[int, int]]:
        return [(0, self.num_pairs)]

    def sample_id(self, image_index: int) -> str:
        return Path(self.items[image_index][0]).name

    def __getitem__(self, pair_index: int) -> Pair:
        image_index, caption_index = divmod(pair_index, 2)
        image_path, *captions = self.items[image_index]
        return Pair(open_image(image_path, image_path), captions[caption_index], image_index)


class BenchmarkSource:
    """The train split of a public benchmark: one pair per caption, identity pids."""

    def __init__(self, samples: list[TrainSample]):
        if not samples:
            raise DataSourceError("the benchmark has no training samples")
        self.samples = samples
        self.num_images = len({s.image_id for s in samples})

    @property
    def num_pairs(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return max(s.pid for s in self.samples) + 1

    def blocks(self) -> list[tuple[int, int]]:
        return [(0, self.num_pairs)]

    def __getitem__(self, pair_index: int) -> Pair:
        sample = self.samples[pair_index]
        return Pair(open_image(sample.image_path, sample.image_path), sample.caption, sample.pid)
