"""The persistent global dedup index: planted duplicates across shards and runs, reruns, concurrent workers."""
from __future__ import annotations

import hashlib
import io
import multiprocessing

import numpy as np
import pytest
import skimage.data
from PIL import Image

from curation.dedup import DedupIndex, phash64
from curation.dedup.index import INDEX_FILE
from storage.errors import GadmsError
from storage.layout import OutputLayout
from storage.records import PersonCrop, make_sample_id

PHOTOS = {
    "astronaut": skimage.data.astronaut,
    "coffee": skimage.data.coffee,
    "chelsea": skimage.data.chelsea,
    "rocket": skimage.data.rocket,
    "camera": lambda: np.stack([skimage.data.camera()] * 3, axis=-1),
    "hubble": skimage.data.hubble_deep_field,
}


def _jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _crop(url: str, source: bytes, pixels: np.ndarray) -> PersonCrop:
    """A PersonCrop of the whole image, built the way the detection stage builds one."""
    source_sha = hashlib.sha256(source).hexdigest()
    box = (0.0, 0.0, float(pixels.shape[1]), float(pixels.shape[0]))
    image = _jpeg(pixels)
    return PersonCrop(
        sample_id=make_sample_id(source_sha, box), source_url=url, page_url="", alt_text="", source_sha256=source_sha,
        image=image, width=pixels.shape[1], height=pixels.shape[0], bbox=box, det_score=0.9, keypoints=None,
        phash=phash64(pixels), crop_sha256=hashlib.sha256(image).hexdigest(),
    )


# The picture of crops whose pHash a test sets by hand: noise, whose mirror's pHash (which dedup also looks up) is
# a fixed 64-bit pattern, within the radius of none of those hashes.
NOISE_JPEG = _jpeg(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8))


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def planted():
    """Originals, and for each a JPEG re-encode, a 0.7× resize, a crop of 3 px per side and an exact copy."""
    originals, variants = {}, {}
    for name, load in PHOTOS.items():
        pixels = load()[:, :, :3]
        source = _jpeg(pixels)
        decoded = _decoded(source)
        originals[name] = _crop(f"https://a.example/{name}.jpg", source, decoded)
        reencoded = _jpeg(decoded, quality=55)
        small = Image.fromarray(decoded).resize((decoded.shape[1] * 7 // 10, decoded.shape[0] * 7 // 10))
        resized = _jpeg(np.asarray(small))
        cropped = _jpeg(decoded[3:-3, 3:-3])
        variants[name] = {
            "reencode": _crop(f"https://b.example/{name}-q55.jpg", reencoded, _decoded(reencoded)),
            "resize": _crop(f"https://b.example/{name}-small.jpg", resized, _decoded(resized)),
            "crop": _crop(f"https://b.example/{name}-crop.jpg", cropped, _decoded(cropped)),
            "copy": _crop(f"https://mirror.example/{name}.jpg", source, decoded),  # the same bytes elsewhere
        }
    return originals, variants


def _distance(a: PersonCrop, b: PersonCrop) -> int:
    return (a.phash ^ b.phash).bit_count()


def test_planted_variants_are_near_and_originals_are_far(planted):
    originals, variants = planted
    names = list(originals)
    for name in names:
        for kind, crop in variants[name].items():
            assert _distance(crop, originals[name]) <= 6, (name, kind)
        for other in names:
            if other != name:
                assert _distance(originals[name], originals[other]) > 12, (name, other)


def test_duplicates_found_across_two_shards_and_two_runs(tmp_path, planted):
    originals, variants = planted
    dedup_dir = OutputLayout(str(tmp_path)).dedup_dir
    unique = _crop("https://b.example/unique.jpg", b"unique", skimage.data.immunohistochemistry())
    shard_a = list(originals.values())
    shard_b = [crop for name in originals for crop in variants[name].values()] + [unique]

    def run_both(index: DedupIndex):
        kept_a, rejects_a = index.deduplicate(shard_a, "shard-a")
        kept_b, rejects_b = index.deduplicate(shard_b, "shard-b")
        return kept_a, rejects_a, kept_b, rejects_b

    for run in range(2):  # the second run is a rebuild in a fresh process state over the same index
        index = DedupIndex.open(dedup_dir, radius=6)
        kept_a, rejects_a, kept_b, rejects_b = run_both(index)
        assert [c.sample_id for c in kept_a] == [c.sample_id for c in shard_a], run
        assert rejects_a == []
        assert [c.sample_id for c in kept_b] == [unique.sample_id]
        by_sample = {r.sample_id: r for r in rejects_b}
        assert len(by_sample) == len(shard_b) - 1
        for name in originals:
            for kind, crop in variants[name].items():
                reject = by_sample[crop.sample_id]
                assert reject.stage == "dedup"
                assert reject.reason == ("exact_duplicate" if kind == "copy" else "near_duplicate"), (name, kind)
                assert reject.detail == originals[name].sample_id
                assert reject.url == crop.source_url
        assert len(index) == len(shard_a) + 1

    # A third shard: its own copies of the unique crop are duplicates of shard-b's sample, not of each other.
    index = DedupIndex.open(dedup_dir, radius=6)
    kept_c, rejects_c = index.deduplicate([variants["coffee"]["resize"], unique], "shard-c")
    assert kept_c == []
    assert [(r.reason, r.detail) for r in rejects_c] == [
        ("near_duplicate", originals["coffee"].sample_id),
        ("exact_duplicate", unique.sample_id),
    ]
    assert (tmp_path / "dedup" / INDEX_FILE).is_file()


def test_duplicates_within_one_batch_keep_the_first(tmp_path, planted):
    originals, variants = planted
    index = DedupIndex.open(tmp_path, radius=6)
    batch = [variants["rocket"]["resize"], originals["rocket"], variants["rocket"]["copy"], originals["camera"]]
    kept, rejects = index.deduplicate(batch, "s")
    assert [c.sample_id for c in kept] == [variants["rocket"]["resize"].sample_id, originals["camera"].sample_id]
    assert [(r.sample_id, r.reason, r.detail) for r in rejects] == [
        (originals["rocket"].sample_id, "near_duplicate", variants["rocket"]["resize"].sample_id),
        (variants["rocket"]["copy"].sample_id, "near_duplicate", variants["rocket"]["resize"].sample_id),
    ]


def test_radius_zero_keeps_near_duplicates(tmp_path, planted):
    originals, variants = planted
    index = DedupIndex.open(tmp_path, radius=0)
    kept, rejects = index.deduplicate([originals["chelsea"], variants["chelsea"]["copy"], variants["chelsea"]["resize"]], "s")
    far = _distance(variants["chelsea"]["resize"], originals["chelsea"]) > 0
    assert [r.reason for r in rejects] == ["exact_duplicate"] + ([] if far else ["near_duplicate"])
    assert len(kept) == (2 if far else 1)


def test_rerun_of_a_shard_after_a_kill_replaces_its_own_entries(tmp_path, planted):
    originals, variants = planted
    first = DedupIndex.open(tmp_path)
    crops = list(originals.values())
    first.deduplicate(crops[:3], "shard-x")  # a run that was killed after dedup, before writing its shard
    other = DedupIndex.open(tmp_path)  # another worker, loaded before the rerun
    rerun = DedupIndex.open(tmp_path)
    kept, rejects = rerun.deduplicate(crops, "shard-x")
    assert [c.sample_id for c in kept] == [c.sample_id for c in crops] and rejects == []
    assert len(rerun) == len(crops)
    # The other worker sees the replaced entries, not a stale copy.
    kept, rejects = other.deduplicate([variants["astronaut"]["crop"]], "shard-y")
    assert kept == [] and rejects[0].detail == originals["astronaut"].sample_id
    assert len(other) == len(crops)


def test_high_bit_hashes_are_compared_on_all_64_bits(tmp_path):
    """pHashes are uniform over 64 bits: half have the top bit set; none may lose low bits on the way."""
    top = 1 << 63

    def crop(name: str, phash: int) -> PersonCrop:
        return PersonCrop(sample_id=name, source_url=name, page_url="", alt_text="", source_sha256=name, image=NOISE_JPEG,
                          width=1, height=1, bbox=(0, 0, 1, 1), det_score=1.0, keypoints=None, phash=phash,
                          crop_sha256=name)

    DedupIndex.open(tmp_path).deduplicate([crop("a", top), crop("b", top | 0b1111111)], "s1")
    kept, rejects = DedupIndex.open(tmp_path).deduplicate([crop("c", top | 0b10000000), crop("d", top | 0b11111111)], "s2")
    assert [c.sample_id for c in kept] == [] and [(r.detail, r.extra["distance"]) for r in rejects] == [("a", 1), ("b", 1)]
    kept, _ = DedupIndex.open(tmp_path).deduplicate([crop("e", top | (0b1111111 << 8))], "s3")
    assert [c.sample_id for c in kept] == ["e"]  # 7 bits from a, 14 from b


def test_a_damaged_index_file_is_a_one_line_error(tmp_path):
    (tmp_path / INDEX_FILE).write_bytes(b"this is not a duckdb database" * 100)
    with pytest.raises(GadmsError, match=r"index.duckdb: cannot open the dedup index") as info:
        DedupIndex.open(tmp_path)
    assert "\n" not in str(info.value)


def test_remote_root_and_bad_radius_are_refused(tmp_path):
    with pytest.raises(GadmsError, match="local directory"):
        DedupIndex.open("memory://bucket/dedup")
    with pytest.raises(GadmsError, match="radius"):
        DedupIndex.open(tmp_path, radius=40)


GROUPS, PER_WORKER, WORKERS = 60, 120, 4


def _worker(args) -> list[str]:
    """One worker: its own shard of near-duplicates of shared groups, deduplicated in small batches."""
    directory, worker = args
    rng = np.random.default_rng(1000 + worker)
    centres = np.random.default_rng(0).integers(0, 2**64, GROUPS, dtype=np.uint64)
    index = DedupIndex.open(directory, radius=6)
    kept_ids = []
    crops = []
    for k in range(PER_WORKER):
        group = int(rng.integers(0, GROUPS))
        phash = int(centres[group])
        for bit in rng.choice(64, int(rng.integers(0, 4)), replace=False):
            phash ^= 1 << int(bit)
        sample_id = f"w{worker}-{k}-g{group}"
        crops.append(PersonCrop(
            sample_id=sample_id, source_url=sample_id, page_url="", alt_text="", source_sha256=sample_id,
            image=NOISE_JPEG, width=1, height=1, bbox=(0, 0, 1, 1), det_score=1.0, keypoints=None, phash=phash,
            crop_sha256=sample_id,
        ))
    for start in range(0, PER_WORKER, 10):
        kept, _ = index.deduplicate(crops[start : start + 10], f"worker-{worker}-{start}")
        kept_ids += [c.sample_id for c in kept]
    return kept_ids


@pytest.mark.slow
def test_parallel_workers_never_both_keep_a_duplicate(tmp_path):
    centres = np.random.default_rng(0).integers(0, 2**64, GROUPS, dtype=np.uint64)
    gaps = np.bitwise_count(centres[:, None] ^ centres[None, :])[~np.eye(GROUPS, dtype=bool)]
    assert gaps.min() > 12  # groups (centre ± 3 bits) can never match each other
    with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
        kept = [sample_id for ids in pool.map(_worker, [(str(tmp_path), w) for w in range(WORKERS)]) for sample_id in ids]
    groups = [sample_id.rsplit("-g", 1)[1] for sample_id in kept]
    seen = {int(g) for g in groups}
    assert len(groups) == len(seen)  # one kept crop per group, whichever worker got there first
    assert len(DedupIndex.open(tmp_path)) == len(seen)


def test_mirrored_copies_are_near_duplicates(tmp_path, planted):
    """A left-right mirror of a kept crop, in a later shard or later in the same batch, is rejected; its own pHash
    is far from the original's, so only the mirror's hash finds it. Distinct photos stay kept."""
    originals, _ = planted
    mirrors = {}
    for name, original in originals.items():
        pixels = np.ascontiguousarray(_decoded(original.image)[:, ::-1])
        mirrors[name] = _crop(f"https://m.example/{name}-mirror.jpg", _jpeg(pixels), pixels)
    assert all(_distance(mirrors[name], originals[name]) > 6 for name in originals)  # pHash alone misses them

    index = DedupIndex.open(OutputLayout(str(tmp_path / "a")).dedup_dir, radius=6)
    kept, rejects = index.deduplicate(list(originals.values()), "shard-a")
    assert len(kept) == len(originals) and rejects == []
    kept, rejects = index.deduplicate(list(mirrors.values()), "shard-b")
    assert kept == []
    assert {(r.sample_id, r.reason, r.detail) for r in rejects} == {
        (mirrors[name].sample_id, "near_duplicate", originals[name].sample_id) for name in originals}

    index = DedupIndex.open(OutputLayout(str(tmp_path / "b")).dedup_dir, radius=6)
    batch = [originals["coffee"], originals["rocket"], mirrors["coffee"]]
    kept, rejects = index.deduplicate(batch, "shard-a")
    assert [c.sample_id for c in kept] == [originals["coffee"].sample_id, originals["rocket"].sample_id]
    assert [(r.sample_id, r.detail) for r in rejects] == [(mirrors["coffee"].sample_id, originals["coffee"].sample_id)]
    assert rejects[0].extra["distance"] <= 6
