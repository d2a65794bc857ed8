"""The WebPerson storage contract: Parquet schemas of shards, rejects and manifests, defined once.

Bump SCHEMA_VERSION when a column changes meaning or type; readers check it from the file metadata.

v2 added the provenance, face and filter-verdict columns (ADDED_IN_V2); a v1 shard lacks them, and readers give
them as NULL there. Every version's shard columns stay defined in SHARD_SCHEMAS, so one root can hold shards of
several versions: the catalog reads each version's shards with that version's columns (storage.catalog).
"""
from __future__ import annotations

import dataclasses
import json

import pyarrow as pa

from storage.records import Captions, PersonCrop

SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = b"gadms.schema_version"

NUM_KEYPOINTS = 17

# Columns shared by downloads, crops and shards: how the source image was fetched (null in files before v2).
_FETCH_FIELDS = [
    pa.field("fetched_at", pa.timestamp("us", tz="UTC")),  # when the crawl got the response
    pa.field("http_status", pa.int16()),  # of the final response, after redirects
    pa.field("x_robots_tag", pa.string()),  # X-Robots-Tag values served with the image, ", "-joined; null if none
]
FACE_BOX_TYPE = pa.list_(pa.list_(pa.float32(), 4))  # [x1, y1, x2, y2] per face, crop pixels

SHARD_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # JPEG crop
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source_url", pa.string(), nullable=False),
        pa.field("page_url", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("crop_sha256", pa.string(), nullable=False),
        pa.field("source_meta", pa.string()),  # the URL list's extra columns as a JSON object; null if none
        pa.field("bbox", pa.list_(pa.float32(), 4), nullable=False),  # x1, y1, x2, y2, source pixels
        pa.field("det_score", pa.float32(), nullable=False),
        pa.field("keypoints", pa.list_(pa.float32(), NUM_KEYPOINTS * 3)),  # (x, y, conf) × 17; null if no pose
        pa.field("phash", pa.uint64(), nullable=False),
        *_FETCH_FIELDS,
        pa.field("num_faces", pa.int32()),  # faces the detect stage found in the crop; null: not counted
        pa.field("face_boxes", FACE_BOX_TYPE),  # their boxes; `gadms export --blur-faces` blurs them
        pa.field("caption1", pa.string(), nullable=False),
        pa.field("caption2", pa.string(), nullable=False),
        pa.field("caption_model", pa.string(), nullable=False),
        pa.field("caption_backend", pa.string(), nullable=False),
        pa.field("template_id", pa.string()),
        pa.field("prompt_version", pa.string()),
        # The MLLM filter's verdict (true for every stored sample it screened), reason and model; null: no filter.
        pa.field("filter_keep", pa.bool_()),
        pa.field("filter_reason", pa.string()),
        pa.field("filter_model", pa.string()),
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string()),
        pa.field("sample_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("bbox", pa.list_(pa.float32(), 4)),  # x1, y1, x2, y2 of a rejected person; null for URLs/images
        pa.field("shard_id", pa.string()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

# A bounded sample of rejected crops or images, per shard, for people to look at (`gadms browse`): one row per
# thumbnailed reject, `reject_row` its position in that shard's rejects file.
REJECT_THUMBNAIL_SCHEMA = pa.schema(
    [
        pa.field("shard_id", pa.string(), nullable=False),
        pa.field("reject_row", pa.int64(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("image", pa.binary(), nullable=False),  # small JPEG
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

# Stage outputs between the crawl, detect and caption CLIs (the build flow passes records in memory instead).
# Crawl downloads: the bytes as served (not decoded, not re-encoded); large_binary, as a chunk may pass 2 GiB.
DOWNLOAD_SCHEMA = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("page_url", pa.string()),
        pa.field("alt_text", pa.string()),
        pa.field("image", pa.large_binary(), nullable=False),  # as served: not decoded, not re-encoded
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("mime", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("source_meta", pa.string()),  # the URL list's extra columns as a JSON object; null if none
        *_FETCH_FIELDS,
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)

# The public WebPerson release layout, as the Hugging Face Hub holds WebPerson-5M: `image` is the `datasets`
# Image feature, stored in Parquet as struct<bytes, path>, and the feature types travel in the `huggingface`
# schema metadata (so `datasets.load_dataset` decodes `image` to a PIL image).
HF_IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
HF_METADATA_KEY = b"huggingface"
PUBLIC_FEATURES = {
    "image": {"_type": "Image"},
    "image_path": {"dtype": "string", "_type": "Value"},
    "caption1": {"dtype": "string", "_type": "Value"},
    "caption2": {"dtype": "string", "_type": "Value"},
}
PUBLIC_SCHEMA = pa.schema(
    [
        pa.field("image", HF_IMAGE_TYPE),
        pa.field("image_path", pa.string()),
        pa.field("caption1", pa.string()),
        pa.field("caption2", pa.string()),
    ],
    metadata={HF_METADATA_KEY: json.dumps({"info": {"features": PUBLIC_FEATURES}}).encode()},
)
PUBLIC_COLUMNS = tuple(PUBLIC_SCHEMA.names)

# Per-shard counts behind `gadms stats` (storage.stats.STATISTICS_SQL says what each statistic's keys are),
# written beside each shard at commit: they add up across shards, so statistics never rescan the captions.
SHARD_STATS_SCHEMA = pa.schema(
    [
        pa.field("statistic", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("key2", pa.string()),
        pa.field("count", pa.int64(), nullable=False),
    ],
    metadata={SCHEMA_VERSION_KEY: str(SCHEMA_VERSION).encode()},
)
# The sha256 of the shard and the number of rejects a statistics file was counted from (its Parquet metadata): the
# catalog uses the file only while the manifest entry names that same shard and count.
SHARD_STATS_SHA256_KEY = b"gadms.shard_sha256"
SHARD_STATS_REJECTS_KEY = b"gadms.rejects"

# Per-shard manifest entry (one JSON file per shard under manifest/); written after the shard is in place,
# so a shard without a "complete" manifest entry is never counted.
MANIFEST_FIELDS = ("shard_id", "path", "rows", "bytes", "sha256", "status", "run_id", "rejects", "created_at")
# Written by commit, absent from entries written before they were recorded (readers then take them from the
# footer): `row_groups` the rows of each of the shard's row groups, `schema_version` the shard's.
MANIFEST_RECORDED_FIELDS = ("row_groups", "schema_version")
MANIFEST_STATUS_COMPLETE = "complete"

# Shard columns a v1 shard lacks.
ADDED_IN_V2 = ("fetched_at", "http_status", "x_robots_tag", "num_faces", "face_boxes", "filter_keep",
               "filter_reason", "filter_model")

# The shard columns of every schema version (a version's shards have at least these); a new version adds its own.
SHARD_SCHEMAS: dict[int, pa.Schema] = {
    1: pa.schema([f for f in SHARD_SCHEMA if f.name not in ADDED_IN_V2], metadata={SCHEMA_VERSION_KEY: b"1"}),
    2: SHARD_SCHEMA,
}
READABLE_SCHEMA_VERSIONS = tuple(sorted(SHARD_SCHEMAS))

# Person crops of the detection stage: the fields of storage.records.PersonCrop, typed as in the shard schema,
# so the two cannot drift apart.
CROP_SCHEMA = pa.schema([SHARD_SCHEMA.field(f.name) for f in dataclasses.fields(PersonCrop)])

# Captions of the caption stage (`gadms caption` writes them; the build joins them into shards), likewise.
CAPTIONS_SCHEMA = pa.schema([SHARD_SCHEMA.field(f.name) for f in dataclasses.fields(Captions)])
