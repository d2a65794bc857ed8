"""The README.md dataset card of an export: a Hugging Face YAML header and what the build recorded.

Everything in the card comes from the output root: counts and reasons from the complete shards and their
rejects (the catalog's views), settings from the run records under runs/. What a root does not record is
said to be not recorded. Text that comes from the web or from shards (domains, model and template names) is
escaped, since the card is Markdown that the Hub renders.
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass

import yaml

from storage.catalog import memory_catalog, run_records
from storage.layout import OutputLayout
from storage.stats import caption_stats

CARD_SAMPLE_COLUMNS = ["source_url", "caption1", "caption2", "caption_model", "caption_backend", "template_id",
                       "prompt_version", "num_faces"]
LICENSE_UNSET = "unknown"
# The Hub's size_categories buckets: (upper bound, label); above the last bound: "n>1T".
_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                    (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (10**12, "100B<n<1T")]
_BUILD_FUNNEL = [("urls", "input URLs"), ("downloaded", "images downloaded"), ("persons", "persons detected (after "
                 "person and pose rules)"), ("unique", "after near-duplicate removal"), ("kept", "kept (captioned)")]
# (label, dotted key into a run record's config) of the settings the card lists.
_SETTINGS = [
    ("detector", "detect.backend"), ("min confidence", "detect.min_conf"),
    ("face counting", "detect.face_count"),
    ("min shorter box side (px)", "detect.min_short_side"), ("box aspect w/h min", "detect.min_aspect"),
    ("box aspect w/h max", "detect.max_aspect"), ("pose check", "detect.pose_check"),
    ("min visible keypoints", "detect.min_keypoints"),
    ("dedup enabled", "dedup.enabled"), ("dedup pHash radius (bits of 64)", "dedup.radius"),
    ("caption backend", "caption.backend"), ("caption models", "caption.models"),
    ("caption mode", "caption.caption_mode"), ("prompt version", "caption.prompt_version"),
    ("MLLM filter", "caption.filter"), ("filter model (null: the first caption model)", "caption.filter_model"),
    ("caption quality checks", "caption.quality.enabled"),
    ("robots.txt obeyed", "crawl.robots"), ("opt-out directives honoured", "crawl.opt_out_directives"),
]
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def md(value) -> str:
    """`value` as inert one-line Markdown: no HTML, no links, images, emphasis or table breaks."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True)
class SplitSize:
    rows: int
    num_bytes: int  # Arrow size in memory, as `datasets` counts a split
    download_size: int  # bytes of the Parquet files


def size_category(rows: int) -> str:
    return next((label for bound, label in _SIZE_CATEGORIES if rows < bound), "n>1T")


def card_header(size: SplitSize, license: str | None) -> dict:
    features = [{"name": "image", "dtype": "image"}] + [
        {"name": name, "dtype": "string"} for name in ("image_path", "caption1", "caption2")]
    return {
        "license": license or LICENSE_UNSET,
        "task_categories": ["image-to-text", "text-to-image"],
        "tags": ["person-retrieval", "text-based-person-search"],
        "size_categories": [size_category(size.rows)],
        "dataset_info": {
            "features": features,
            "splits": [{"name": "train", "num_bytes": size.num_bytes, "num_examples": size.rows}],
            "download_size": size.download_size,
            "dataset_size": size.num_bytes,
        },
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
    }


_MISSING = object()


def _config_value(config: dict, dotted: str):
    """The setting at `dotted` (None where the config holds null), or _MISSING where the record lacks it."""
    for key in dotted.split("."):
        if not isinstance(config, dict) or key not in config:
            return _MISSING
        config = config[key]
    return config


def _setting_lines(records: list[dict]) -> list[str]:
    lines = []
    for label, key in _SETTINGS:
        values = [v for v in (_config_value(r.get("config", {}), key) for r in records) if v is not _MISSING]
        seen = sorted({json.dumps(v, sort_keys=True) for v in values})
        if not seen:
            lines.append(f"- {md(label)}: not recorded")
            continue
        note = f" (recorded in {len(values)} of {len(records)} run records)" if len(values) < len(records) else ""
        lines.append(f"- {md(label)}: {' / '.join(md(v) for v in seen)}{note}")
    return lines


def _funnel_lines(records: list[dict]) -> list[str]:
    builds = [r["summary"] for r in records if r.get("flow") == "build-webperson" and isinstance(r.get("summary"), dict)]
    if not builds:
        return ["The stage counts of the build are not recorded (no build-webperson run record with a summary "
                "under runs/)."]
    lines = [f"Summed over the {len(builds)} build-webperson run record(s) under runs/ (a run that stopped before "
             "writing its record is not counted):", "", "| stage | count |", "| --- | ---: |"]
    lines += [f"| {md(label)} | {sum(int(s.get(key, 0)) for s in builds)} |" for key, label in _BUILD_FUNNEL]
    return lines


def _table(head: tuple[str, str], rows: list[tuple], empty: str) -> list[str]:
    if not rows:
        return [empty]
    return [f"| {head[0]} | {head[1]} |", "| --- | ---: |"] + [f"| {md(a)} | {b} |" for a, b in rows]


def _face_lines(faces: tuple[int, int, int], blurred: bool) -> list[str]:
    counted, with_faces, total = faces
    if not counted:
        return ["- Faces: not counted (shards of schema v1, or built with `detect.face_count: false`); none are "
                "blurred in this export."]
    lines = [f"- Faces: the detect stage's face counter (OpenCV's frontal-face Haar cascade; it misses faces in "
             f"profile, small or turned away) found {total} face(s) in {with_faces} of the {counted} crops it "
             "searched."]
    if blurred:
        lines.append("- The face boxes it found are blurred in this export's images (`gadms export --blur-faces`); "
                     "faces it missed are not.")
    else:
        lines.append("- Faces are not blurred in this export (`gadms export --blur-faces` blurs the found boxes).")
    return lines


def _safety_lines(records: list[dict], rejects: dict[str, dict[str, int]], faces: tuple[int, int, int],
                  faces_blurred: bool) -> list[str]:
    captions = [c for c in (_config_value(r.get("config", {}), "caption") for r in records) if isinstance(c, dict)]
    screened = [c for c in captions if c.get("filter") and c.get("backend") != "alt-text"]
    nsfw = rejects.get("filter", {}).get("nsfw", 0)
    if not captions:
        lines = ["- MLLM filter: not recorded (no run record holds a caption config)."]
    elif not screened:
        lines = ["- No MLLM filter ran in the recorded runs (`filter` off, or the alt-text backend, which has none): "
                 "the crops were not screened for nudity, sexual or other unsafe content."]
    elif len(screened) == len(captions):
        lines = ["- In every recorded run each crop was screened by an MLLM filter before captioning; it rejects, "
                 f"among others, crops with nudity or sexual content (verdict `nsfw`): {nsfw} crop(s) rejected as `nsfw`."]
    else:
        lines = [f"- The MLLM filter (verdict reasons include `nsfw`) ran in {len(screened)} of {len(captions)} "
                 f"recorded runs (the alt-text backend runs none); {nsfw} crop(s) were rejected as `nsfw`. Crops "
                 "of the other runs were not screened for unsafe content."]
    robots = {_config_value(r.get("config", {}), "crawl.robots") for r in records} - {_MISSING}
    if robots == {True}:
        lines.append("- The crawler obeyed robots.txt and the opt-out directives listed above.")
    elif robots:
        lines.append("- robots.txt was not obeyed in every recorded run (see `robots.txt obeyed` above).")
    lines += _face_lines(faces, faces_blurred)
    lines.append("- Not done by this pipeline: de-identification of the people shown beyond face blurring, age "
                 "estimation, consent, and screening of the captions (or of alt text used as captions) for names or "
                 "other personal data.")
    return lines


def dataset_card(layout: OutputLayout, size: SplitSize, license: str | None, faces_blurred: bool = False) -> str:
    """The README.md of an export of `layout`'s complete shards (`faces_blurred`: the export blurred faces)."""
    con = memory_catalog(layout.root, CARD_SAMPLE_COLUMNS)
    try:
        stats = caption_stats(con, top=10)
        prompt_versions = con.execute("SELECT coalesce(prompt_version, ''), count(*) AS n FROM samples "
                                      "GROUP BY 1 ORDER BY n DESC, 1").fetchall()
        faces = con.execute("SELECT count(num_faces), count(*) FILTER (WHERE num_faces > 0), "
                            "coalesce(sum(num_faces), 0) FROM samples").fetchone()
    finally:
        con.close()
    records = run_records(layout)
    rejects = stats["rejects_by_stage"]
    reject_rows = [(f"{stage} / {reason}", n) for stage, reasons in rejects.items() for reason, n in reasons.items()]
    length = stats["caption_length_words"]
    lines = [
        "---", yaml.safe_dump(card_header(size, license), sort_keys=False).rstrip(), "---", "",
        "# WebPerson (gadms build)", "",
        f"{size.rows} person crops from web images, each with two captions (`caption2` is empty for samples "
        "captioned from their alt text, which have one), exported by `gadms export` in the layout of WebPerson-5M "
        "on the Hugging Face Hub.", "",
        "| column | content |", "| --- | --- |",
        "| image | the person crop (JPEG), a `datasets` Image |",
        "| image\\_path | `images/<sample_id>.jpg`, the crop's name in the authors' JSON + images/ layout |",
        "| caption1, caption2 | the two captions |", "",
        "```python", "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_files="data/train-*.parquet", split="train")', "```", "",
        "## Build funnel", "", *_funnel_lines(records), "",
        f"Rejects of the exported shards by stage and reason ({stats['rejects_total']} in all):", "",
        *_table(("stage / reason", "rejects"), reject_rows, "No rejects recorded."), "",
        "## Source domains", "",
        *_table(("domain", "samples"), [(d["domain"], d["count"]) for d in stats["top_source_domains"]], "None."), "",
        "## Captions", "",
        *_table(("backend / model", "samples"),
                [(f"{b['backend']} / {b['model']}", b["count"]) for b in stats["caption_backends"]], "None."), "",
        *_table(("prompt version", "samples"), prompt_versions, "None."), "",
        f"Templates used: {stats['templates_used']}. Most used:", "",
        *_table(("template", "captions"), [(t["template_id"], t["count"]) for t in stats["top_templates"]],
                "No template ids recorded."), "",
        f"Caption length in words: min {length['min']}, median {length['median']}, mean {length['mean']}, "
        f"max {length['max']} ({stats['captions']} non-empty captions).", "",
        "## Curation settings", "",
        f"From the {len(records)} run record(s) under runs/:" if records else "No run records under runs/.", "",
        *_setting_lines(records), "",
        "## Safety measures", "", *_safety_lines(records, rejects, faces, faces_blurred), "",
        "## Provenance", "",
        "Not in this export: the build's shards keep, per sample, the image URL (`source_url`), the page it was "
        "found on (`page_url`), when it was fetched (`fetched_at`), the HTTP status, the `X-Robots-Tag` values "
        "served with it, the URL list's extra columns (`source_meta`, e.g. licence or NSFW columns) and the MLLM "
        "filter's verdict (`filter_keep`, `filter_reason`, `filter_model`).", "",
    ]
    if not license:
        lines += ["## License", "", "Not set: fill in `license` in the header above before publishing.", ""]
    return "\n".join(lines)
