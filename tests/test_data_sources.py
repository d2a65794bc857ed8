"""WebPerson shard sources, the public layouts, the block-shuffle sampler and deterministic augmentation."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from gadms_model.data import DataSourceError, JsonImageSource, ShardSource, public_parquet_source, webperson_source
from gadms_model.data.loading import BlockShuffleSampler, TrainDataset, collate_pairs
from gadms_model.data.transforms import eval_transform, train_transform
from storage.errors import GadmsError
from storage.export import export_public
from storage.layout import OutputLayout
from storage.shards import commit_shard
from tests.storage_fixtures import captions_for, crop


def write_root(root, shard_crops: dict[str, list[int]], incomplete: set[str] = frozenset()) -> OutputLayout:
    layout = OutputLayout(str(root))
    for shard_id, numbers in shard_crops.items():
        crops = [crop(n) for n in numbers]
        caps = [captions_for(c, f"first caption of {n}", f"second caption of {n}") for c, n in zip(crops, numbers)]
        commit_shard(layout, shard_id, "run-1", crops, caps, [])
        if shard_id in incomplete:
            path = layout.manifest_path(shard_id)
            entry = json.loads(open(path).read())
            entry["status"] = "writing"
            open(path, "w").write(json.dumps(entry))
    return layout


def test_webperson_source_reads_complete_shards_only(tmp_path):
    write_root(tmp_path, {"s0001": [1, 2], "s0002": [3], "s0003": [4, 5]}, incomplete={"s0002"})
    source = webperson_source(str(tmp_path))
    assert source.num_images == 4 and source.num_pairs == 8 and source.num_classes == 4
    pairs = [source[i] for i in range(8)]
    assert [(p.caption, p.pid) for p in pairs] == [
        ("first caption of 1", 0), ("second caption of 1", 0),
        ("first caption of 2", 1), ("second caption of 2", 1),
        ("first caption of 4", 2), ("second caption of 4", 2),
        ("first caption of 5", 3), ("second caption of 5", 3),
    ]
    assert pairs[4].image.size == (32, 64) and pairs[4].image.mode == "RGB"
    assert source.sample_id(2) == crop(4).sample_id
    # raw_pair: the same pair as stored, the image's bytes undecoded.
    assert source.raw_pair(5) == (crop(4).image, "second caption of 4", crop(4).sample_id)
    # The catalog path names the same root.
    assert webperson_source(str(tmp_path / "catalog.duckdb")).num_images == 4


def _edit_entry(layout: OutputLayout, shard_id: str, **changes) -> None:
    path = Path(layout.manifest_path(shard_id))
    entry = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps({k: v for k, v in entry.items() if v is not None}))


def test_webperson_source_starts_from_the_manifest_and_checks_each_footer_when_it_reads_it(tmp_path, monkeypatch):
    layout = write_root(tmp_path, {"s0001": [1, 2], "s0002": [3, 4]})
    opened = []
    original = ShardSource._open
    monkeypatch.setattr(ShardSource, "_open", lambda self, path: opened.append(Path(path).name) or original(self, path))
    source = webperson_source(str(tmp_path))
    assert opened == [] and source.num_pairs == 8 and source.blocks() == [(0, 4), (4, 8)]
    assert source[1].caption == "second caption of 1" and opened == ["s0001.parquet"]
    # An entry that disagrees with its footer is an error naming the shard when it is read, never served.
    _edit_entry(layout, "s0002", row_groups=[1, 1])
    source = webperson_source(str(tmp_path))
    assert source.blocks() == [(0, 4), (4, 6), (6, 8)]
    with pytest.raises(GadmsError) as raised:
        source[4]
    assert str(raised.value) == (f"{layout.shard_path('s0002')}: row groups of [2] rows, its manifest entry says "
                                 f"[1, 1]: delete {layout.manifest_path('s0002')} and rerun gadms build to rewrite it")
    # An entry written before row groups were recorded: that shard's footer is read at start-up.
    _edit_entry(layout, "s0002", row_groups=None)
    opened.clear()
    source = webperson_source(str(tmp_path))
    assert opened == ["s0002.parquet"] and source.blocks() == [(0, 4), (4, 8)]
    assert source[7].caption == "second caption of 4"
    # Sizes are checked at start-up, from one listing.
    shard = Path(layout.shard_path("s0001"))
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(GadmsError) as raised:
        webperson_source(str(tmp_path))
    assert str(raised.value) == (f"{shard}: 100 bytes, its manifest entry says {size}: delete "
                                 f"{layout.manifest_path('s0001')} and rerun gadms build to rewrite it")
    shard.unlink()
    with pytest.raises(GadmsError, match=r"s0001.parquet: shard missing, its manifest entry says complete"):
        webperson_source(str(tmp_path))


def test_webperson_source_without_manifests_is_an_error(tmp_path):
    with pytest.raises(DataSourceError, match="manifest: no complete shards"):
        webperson_source(str(tmp_path))


def test_public_parquet_layout(tmp_path):
    write_root(tmp_path / "out", {"s0001": [1, 2], "s0002": [3]})
    export_public(str(tmp_path / "out"), str(tmp_path / "public"))
    source = public_parquet_source(str(tmp_path / "public"))
    assert source.num_images == 3
    assert [(source[i].caption, source[i].pid) for i in (0, 5)] == [("first caption of 1", 0), ("second caption of 3", 2)]
    assert source.sample_id(1) == f"images/{crop(2).sample_id}.jpg"


def test_public_json_layout(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (16, 32), (200, 10, 10)).save(tmp_path / "images" / name)
    entries = [{"a.jpg": {"caption1": "a man in red", "caption2": "red shirt"}}, {"b.jpg": {"caption1": "a woman", "caption2": "blue"}}]
    (tmp_path / "webperson.json").write_text(json.dumps(entries))
    source = JsonImageSource(str(tmp_path / "webperson.json"))
    assert [(source[i].caption, source[i].pid) for i in range(4)] == [("a man in red", 0), ("red shirt", 0), ("a woman", 1), ("blue", 1)]
    entries.append({"c.jpg": {"caption1": "x", "caption2": "y"}})
    (tmp_path / "webperson.json").write_text(json.dumps(entries))
    with pytest.raises(DataSourceError, match=r"webperson.json: record 2 \('c.jpg'\): image not found"):
        JsonImageSource(str(tmp_path / "webperson.json"))
    entries[2] = {"b.jpg": {"caption1": "x"}}
    (tmp_path / "webperson.json").write_text(json.dumps(entries))
    with pytest.raises(DataSourceError, match=r"record 2 \('b.jpg'\): needs non-empty 'caption1' and 'caption2'"):
        JsonImageSource(str(tmp_path / "webperson.json"))


def test_sampler_covers_every_index_once_across_ranks_and_resumes():
    blocks = [(0, 10), (10, 14), (14, 30), (30, 31)]
    ranks = [BlockShuffleSampler(blocks, seed=3, num_replicas=3, rank=r, window=2) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(1)
    orders = [list(s) for s in ranks]
    assert [len(o) for o in orders] == [11, 11, 11]
    assert set(sum(orders, [])) == set(range(31))
    ranks[0].set_epoch(2)
    assert list(ranks[0]) != orders[0]
    ranks[0].set_epoch(1, start=4)
    assert list(ranks[0]) == orders[0][4:] and len(ranks[0]) == 7


def whole_epoch_order(sampler: BlockShuffleSampler) -> list[int]:
    """The sampler's order as it was computed before it streamed: the whole epoch as one list (the oracle)."""
    generator = torch.Generator().manual_seed(sampler.seed + 7919 * sampler.epoch)
    block_order = torch.randperm(len(sampler.blocks), generator=generator).tolist()
    order: list[int] = []
    for first in range(0, len(block_order), sampler.window):
        window = [i for b in block_order[first : first + sampler.window] for i in range(*sampler.blocks[b])]
        order += [window[j] for j in torch.randperm(len(window), generator=generator).tolist()]
    padded = order + order[: sampler.per_rank * sampler.num_replicas - len(order)]
    return padded[sampler.rank :: sampler.num_replicas]


@pytest.mark.parametrize("seed", [0, 3, 11])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_streamed_epoch_order_is_the_whole_epoch_order(seed, world):
    blocks = [(0, 10), (10, 14), (14, 30), (30, 31), (31, 64), (64, 65), (65, 99)]
    for window in (1, 2, 3, 8):
        for rank in range(world):
            sampler = BlockShuffleSampler(blocks, seed=seed, num_replicas=world, rank=rank, window=window)
            for epoch, start in ((0, 0), (2, 0), (2, 5)):
                sampler.set_epoch(epoch, start)
                expected = whole_epoch_order(sampler)
                assert len(expected) == sampler.per_rank
                assert list(sampler.epoch_order()) == expected
                assert list(sampler) == expected[start:] and len(sampler) == len(expected) - start


def test_train_dataset_augmentation_depends_on_seed_epoch_and_index_only(tmp_path):
    write_root(tmp_path, {"s0001": [1, 2, 3]})
    dataset = TrainDataset(webperson_source(str(tmp_path)), train_transform((48, 16)), seed=5)
    dataset.set_epoch(2)
    torch.manual_seed(0)
    first = dataset[3]
    torch.manual_seed(123)
    again = dataset[3]
    assert torch.equal(first["image"], again["image"])
    assert (first["caption"], first["pid"], first["caption_id"]) == ("second caption of 2", 1, 3)
    dataset.set_epoch(3)
    assert not torch.equal(dataset[3]["image"], first["image"])
    batch = collate_pairs([dataset[0], dataset[5]])
    assert batch["image"].shape == (2, 3, 48, 16)
    assert batch["pid"].tolist() == [0, 2] and batch["caption_id"].tolist() == [0, 5]


def test_test_transform_is_resize_and_clip_normalisation():
    image = Image.new("RGB", (10, 30), (255, 0, 128))
    tensor = eval_transform((6, 2))(image)
    assert tensor.shape == (3, 6, 2)
    expected = [(1.0 - 0.48145466) / 0.26862954, (0.0 - 0.4578275) / 0.26130258, (128 / 255 - 0.40821073) / 0.27577711]
    # float32 (x - mean) / std of values of size ≤ 2: a few unit roundoffs (≤ 1e-6) from the float64 value.
    assert tensor[:, 0, 0].tolist() == pytest.approx(expected, abs=1e-5)


def test_shard_source_reads_each_row_group_once_per_window(tmp_path, monkeypatch):
    import storage.shards

    monkeypatch.setattr(storage.shards, "ROW_GROUP_SIZE", 2)
    write_root(tmp_path, {"s0001": [1, 2, 3, 4, 5], "s0002": [6, 7]})
    source = webperson_source(str(tmp_path))
    assert source.blocks() == [(0, 4), (4, 8), (8, 10), (10, 14)]
    reads = []
    original = source._open
    monkeypatch.setattr(source, "_open", lambda path: reads.append(path) or original(path))
    sampler = BlockShuffleSampler(source.blocks(), seed=0, window=4)
    order = list(sampler)
    assert sorted(order) == list(range(14))
    assert [source[i].caption.split()[-1] for i in (0, 5, 13)] == ["1", "3", "7"]
    for index in order:
        source[index]
    assert len(reads) == 4  # one read per row group, although the window interleaves them
