"""How right a WebPerson build of the synthetic web is, stage by stage, against the site's ground truth.

Every crop that passed detection and the rules is in the output root: kept in a shard, or in the rejects table
with its box (stages dedup, filter, caption, quality). Each is matched to a ground-truth figure of its source
image by IoU >= IOU_MATCH. A figure is a rendered person or a person-like figure (mannequin, statue, poster);
"the same figure" across an image's copies (duplicates, srcset variants, redirects) is one instance.

- detection: precision = crops of a figure that meets the paper's rules (its ground-truth box and visible
  keypoints pass the build's size, aspect and pose rules; one crop per figure) / crops; recall = such figures
  with a crop / such figures in the images that reached detection. Telling a mannequin from a person is left
  to the filter.
- dedup: links = crops beyond the first of each instance; caught = those the dedup stage rejected; merged =
  dedup rejects that name a kept crop of another instance, per distinct instance.
- filter: over the crops dedup kept, negatives (expected verdict not one_clear_person; a crop of no figure is
  not_a_person) rejected by the filter, and with the expected reason; persons the filter rejected.
- captions: attribute words of the kept captions of persons (expected one_clear_person) true of the person's
  identity (attribute_words), and captions with unfilled template slots (kept, or rejected by the quality stage
  for it).
- urls: each URL-list row ends at one stage (the last one any of its items reached); they sum to the rows.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from curation.caption.quality import unfilled_placeholder
from curation.crawl import read_url_list
from curation.detect.config import DetectConfig
from curation.detect.rules import box_reject, pose_reject
from curation.synthweb.attribute_words import judge_caption
from curation.synthweb.identities import identity_attributes
from curation.synthweb.site import read_ground_truth
from curation.synthweb.verdicts import KEEP
from storage.catalog import run_records
from storage.errors import GadmsError
from storage.layout import OutputLayout
from storage.records import STAGES
from storage.shards import complete_shards, read_parquet, read_shard

IOU_MATCH = 0.5
CROP_STAGES = ("dedup", "filter", "caption", "quality")  # rejects of crops that passed detection and the rules
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Figure:
    path: str  # URL path of its image
    index: int  # position in the record's persons
    instance: tuple  # (original image path, identity, kind): the same figure in every copy of the image
    copy_kind: str | None  # the image's duplicate_kind (exact, reencoded, resized, cropped, mirrored); None: original
    kind: str
    identity: int | None
    bbox: Box
    expected_verdict: str
    meets_rules: bool


@dataclass
class Crop:
    sample_id: str
    path: str
    bbox: Box
    stage: str  # "kept", or the stage that rejected it
    reason: str
    detail: str
    captions: tuple[str, ...]
    figure: Figure | None = None


def box_iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _original(path: str, records: dict[str, dict]) -> str:
    seen = {path}
    while records[path].get("duplicate_of") in records and records[path]["duplicate_of"] not in seen:
        path = records[path]["duplicate_of"]
        seen.add(path)
    return path


def _meets_rules(person: dict, size: tuple[int, int], config: DetectConfig) -> bool:
    """The paper's box and pose rules on the ground truth: visible keypoints count as confident, hidden ones not."""
    keypoints = np.array([[x, y, 1.0 if v == 2 else 0.0] for x, y, v in person["keypoints"]], dtype=np.float32)
    return box_reject(tuple(person["bbox"]), size, config) is None and (
        not config.uses_pose or pose_reject(keypoints, config) is None)


def ground_truth_figures(records: dict[str, dict], config: DetectConfig) -> dict[str, list[Figure]]:
    figures = {}
    for path, record in records.items():
        size = (record.get("width"), record.get("height"))
        out = []
        for index, person in enumerate(record.get("persons") or []):
            if "expected_verdict" not in person:
                raise GadmsError(f"ground truth {path}: a person lacks expected_verdict; render the site again")
            out.append(Figure(path, index, (_original(path, records), person["identity"], person["kind"]),
                              record.get("duplicate_kind"), person["kind"], person["identity"], tuple(person["bbox"]),
                              person["expected_verdict"], _meets_rules(person, size, config)))
        figures[path] = out
    return figures


def _latest_build(layout: OutputLayout) -> dict:
    builds = [r for r in run_records(layout) if r.get("flow") == "build-webperson"]
    if not builds:
        raise GadmsError(f"{layout.root}: no build-webperson run record under runs/; build the root first")
    return max(builds, key=lambda r: str(r.get("started_at")))["config"]


def _url_rows(config: dict) -> list[str]:
    inputs, crawl = config["inputs"], config["crawl"]
    if inputs.get("seed_pages"):
        raise GadmsError("curation quality accounts for URL lists; this build also discovered URLs from seed pages")
    urls = [record.url for path in inputs["url_lists"] for record in read_url_list(
        path, url_column=crawl["url_column"], caption_column=crawl["caption_column"])]
    return urls[: inputs["limit"]] if inputs.get("limit") else urls


def _read_root(layout: OutputLayout) -> tuple[list[Crop], list[dict]]:
    """Crops that passed detection and the rules (kept or rejected later) and every reject row."""
    crops, rejects = [], []
    for entry in complete_shards(layout):
        table = read_shard(layout.shard_path(entry["shard_id"]),
                           columns=["sample_id", "source_url", "bbox", "caption1", "caption2"])
        for row in table.to_pylist():
            crops.append(Crop(row["sample_id"], urlsplit(row["source_url"]).path, tuple(row["bbox"]), "kept", "",
                              "", (row["caption1"], row["caption2"])))
        reject_path = layout.rejects_path(entry["shard_id"])
        table = read_parquet(reject_path)
        if "bbox" not in table.column_names:
            raise GadmsError(f"{reject_path}: rejects have no bbox column (written before it); rebuild the root")
        rejects += table.to_pylist()
    for row in rejects:
        if row["stage"] in CROP_STAGES and row["bbox"] is not None:
            crops.append(Crop(row["sample_id"], urlsplit(row["url"]).path, tuple(row["bbox"]), row["stage"],
                              row["reason"], row["detail"] or "", ()))
    return crops, rejects


def _match(crop: Crop, figures: dict[str, list[Figure]]) -> Figure | None:
    scored = [(box_iou(crop.bbox, f.bbox), f) for f in figures.get(crop.path, [])]
    best = max(scored, key=lambda s: s[0], default=(0.0, None))
    return best[1] if best[0] >= IOU_MATCH else None


def _detection(crops: list[Crop], figures: dict[str, list[Figure]], reached: set[str]) -> dict:
    seen, correct, wrong = set(), 0, Counter()
    for crop in crops:
        figure = crop.figure
        if figure is None:
            wrong["no figure"] += 1
        elif not figure.meets_rules:
            wrong[f"{figure.kind} failing the rules"] += 1
        elif (figure.path, figure.index) in seen:
            wrong["second crop of a figure"] += 1
        else:
            seen.add((figure.path, figure.index))
            correct += 1
    expected = [f for path in reached for f in figures.get(path, []) if f.meets_rules]
    missed = Counter(f.kind for f in expected if (f.path, f.index) not in seen)
    return {"crops": len(crops), "correct": correct, "precision": _share(correct, len(crops)),
            "figures_meeting_rules": len(expected), "found": len(expected) - sum(missed.values()),
            "recall": _share(len(expected) - sum(missed.values()), len(expected)),
            "false_positives": dict(sorted(wrong.items())), "missed_by_kind": dict(sorted(missed.items())),
            "not_persons_passed": sum(1 for c in crops if c.figure and c.figure.expected_verdict in
                                      ("mannequin", "drawing_or_render"))}


def _dedup(crops: list[Crop], rejects: list[dict]) -> dict:
    by_instance: dict[tuple, list[Crop]] = defaultdict(list)
    for crop in crops:
        if crop.figure is not None:
            by_instance[crop.figure.instance].append(crop)
    links = sum(len(group) - 1 for group in by_instance.values())
    caught = sum(min(len(group) - 1, sum(c.stage == "dedup" for c in group)) for group in by_instance.values())
    missed = Counter()  # the copies that survived beside the first survivor (an original when one survived)
    for group in by_instance.values():
        survivors = sorted((c for c in group if c.stage != "dedup"), key=lambda c: c.figure.copy_kind is not None)
        missed.update(c.figure.copy_kind or "original" for c in survivors[1:])
    by_id = {c.sample_id: c for c in crops}
    merged = unresolved = 0
    for crop in (c for c in crops if c.stage == "dedup"):
        kept = by_id.get(crop.detail)
        if kept is None:
            unresolved += 1
        elif (crop.figure is None) != (kept.figure is None) or (
                crop.figure is not None and crop.figure.instance != kept.figure.instance):
            merged += 1
    crawl_copies = sum(1 for r in rejects if r["stage"] == "crawl" and r["reason"] == "duplicate_sha256")
    return {"instances": len(by_instance), "links": links, "caught": caught, "recall": _share(caught, links),
            "missed_by_copy_kind": dict(sorted(missed.items())), "wrongly_merged": merged, "merged_share": _share(merged, len(by_instance)),
            "unresolved": unresolved, "exact_copies_dropped_by_crawl": crawl_copies}


def _filter(crops: list[Crop]) -> dict:
    judged = [c for c in crops if c.stage != "dedup"]
    negatives = Counter()
    rejected = Counter()
    reasons: dict[str, Counter] = defaultdict(Counter)
    right_reason = 0
    persons = wrongly_rejected = 0
    for crop in judged:
        expected = crop.figure.expected_verdict if crop.figure else "not_a_person"
        by_filter = crop.stage == "filter"
        if expected == KEEP:
            persons += 1
            wrongly_rejected += by_filter
            continue
        kind = crop.figure.kind if crop.figure else "no figure"
        negatives[kind] += 1
        rejected[kind] += by_filter
        if by_filter:
            reasons[kind][crop.reason] += 1
        right_reason += by_filter and crop.reason == expected
    total = sum(negatives.values())
    return {"crops": len(judged), "negatives": total, "negatives_rejected": sum(rejected.values()),
            "rejected_share": _share(sum(rejected.values()), total), "right_reason": right_reason,
            "right_reason_share": _share(right_reason, total),
            "negatives_by_kind": {
                k: {"crops": n, "rejected": rejected[k], "reasons": dict(sorted(reasons[k].items()))}
                for k, n in sorted(negatives.items())},
            "persons": persons, "persons_rejected": wrongly_rejected,
            "persons_rejected_share": _share(wrongly_rejected, persons)}


def _captions(crops: list[Crop], rejects: list[dict]) -> dict:
    right = wrong_total = captions = unfilled = 0
    wrong_words = Counter()
    for crop in crops:
        if crop.stage != "kept":
            continue
        unfilled += sum(1 for text in crop.captions if unfilled_placeholder(text))
        if crop.figure is None or crop.figure.expected_verdict != KEEP:
            continue  # a poster's caption, say, describes no person's true colours
        identity = identity_attributes(crop.figure.identity)
        for text in crop.captions:
            if not text:
                continue
            judgement = judge_caption(text, identity)
            captions += 1
            right += judgement.right
            wrong_total += len(judgement.wrong)
            wrong_words.update(judgement.wrong)
    unfilled += sum(1 for r in rejects if r["stage"] == "quality" and r["reason"] == "unfilled_placeholder")
    return {"captions_judged": captions, "attribute_words": right + wrong_total, "right": right,
            "right_share": _share(right, right + wrong_total), "wrong_words": dict(wrong_words.most_common(10)),
            "unfilled_slots": unfilled}


def _urls(url_rows: list[str], crops: list[Crop], rejects: list[dict]) -> dict:
    """Each row's fate: a crawl reject, else the last stage its image's items reached ("kept" beats all)."""
    order = {stage: k for k, stage in enumerate(STAGES)}
    crawl_rejects = Counter(r["url"] for r in rejects if r["stage"] == "crawl")
    furthest: dict[str, str] = {}
    for row in rejects:
        if row["stage"] != "crawl" and row["url"]:
            current = furthest.get(row["url"])
            if current != "kept" and (current is None or order[row["stage"]] > order[current]):
                furthest[row["url"]] = row["stage"]
    kept_paths = {c.path for c in crops if c.stage == "kept"}
    fates = Counter()
    for url, rows in Counter(url_rows).items():
        dropped = min(rows, crawl_rejects[url])
        fates["crawl"] += dropped
        if rows > dropped:
            fate = "kept" if urlsplit(url).path in kept_paths else furthest.get(url, "unaccounted")
            fates[fate] += 1
            fates["unaccounted"] += rows - dropped - 1  # a row the crawl neither fetched nor rejected
    fates = {k: n for k, n in fates.items() if n}
    return {"rows": len(url_rows), "by_final_stage": dict(sorted(fates.items())),
            "accounted": sum(fates.values()) == len(url_rows) and "unaccounted" not in fates}


def _build_figures(site_dir: str | Path, config: dict) -> dict[str, list[Figure]]:
    """The site's ground-truth figures, judged by the rules of the build's detect config."""
    records = {record["path"]: record for _, record in read_ground_truth(site_dir)}
    return ground_truth_figures(records, DetectConfig.model_validate(config["detect"]))


def curation_quality(site_dir: str | Path, output_root: str | Path) -> dict:
    """The figures of the module docstring for the build in `output_root` of the site rendered in `site_dir`."""
    layout = OutputLayout(str(output_root))
    config = _latest_build(layout)
    figures = _build_figures(site_dir, config)
    crops, rejects = _read_root(layout)
    unknown = next((c.path for c in crops if c.path not in figures), None)
    if unknown is not None:
        raise GadmsError(f"{output_root}: crop of {unknown}, which the site {site_dir} has no ground truth for")
    for crop in crops:
        crop.figure = _match(crop, figures)
    url_rows = _url_rows(config)
    # An image reached detection when a row of it was fetched (more rows than crawl rejects) and it decoded.
    crawl_rejects = Counter(r["url"] for r in rejects if r["stage"] == "crawl")
    undecoded = {r["url"] for r in rejects if r["stage"] == "decode"}
    reached = {urlsplit(url).path for url, rows in Counter(url_rows).items()
               if rows > crawl_rejects[url] and url not in undecoded}
    kept = [c for c in crops if c.stage == "kept"]
    clear = sum(1 for c in kept if c.figure is not None and c.figure.expected_verdict == KEEP)
    return {
        "iou_match": IOU_MATCH,
        "detection": _detection(crops, figures, reached),
        "dedup": _dedup(crops, rejects),
        "filter": _filter(crops),
        "captions": _captions(crops, rejects),
        "kept": {"samples": len(kept), "one_clear_person": clear, "precision": _share(clear, len(kept))},
        "urls": _urls(url_rows, crops, rejects),
    }


def identities_of_samples(site_dir: str | Path, output_root: str | Path, sample_ids: list[str]
                          ) -> dict[str, int | None]:
    """The ground-truth identity each kept sample of the build shows (its box matched to a figure by IoU), for
    checking what a retrieval model returns; None where it matches no figure or a figure that depicts no one."""
    layout = OutputLayout(str(output_root))
    figures = _build_figures(site_dir, _latest_build(layout))
    wanted = set(sample_ids)
    matched = {crop.sample_id: _match(crop, figures) for crop in _read_root(layout)[0]
               if crop.stage == "kept" and crop.sample_id in wanted}
    missing = sorted(wanted - set(matched))
    if missing:
        raise GadmsError(f"{output_root}: no kept sample {missing[0]!r}")
    return {sample_id: getattr(matched[sample_id], "identity", None) for sample_id in sample_ids}


def format_quality_table(quality: dict) -> str:
    """A short table of the headline figures, for the demo's output."""
    d, u, f, c, k = (quality[key] for key in ("detection", "dedup", "filter", "captions", "kept"))

    def pct(value) -> str:
        return "   -  " if value is None else f"{100 * value:5.1f}%"

    rows = [
        ("detection + rules", "precision", pct(d["precision"]), f"{d['correct']}/{d['crops']} crops"),
        ("", "recall", pct(d["recall"]), f"{d['found']}/{d['figures_meeting_rules']} figures"),
        ("dedup", "links caught", pct(u["recall"]), f"{u['caught']}/{u['links']} links"),
        ("", "distinct merged", pct(u["merged_share"]), f"{u['wrongly_merged']}/{u['instances']} figures"),
        ("filter", "negatives rejected", pct(f["rejected_share"]), f"{f['negatives_rejected']}/{f['negatives']}"),
        ("", "persons rejected", pct(f["persons_rejected_share"]), f"{f['persons_rejected']}/{f['persons']}"),
        ("captions", "attribute words right", pct(c["right_share"]), f"{c['right']}/{c['attribute_words']}"),
        ("", "unfilled slots", f"{c['unfilled_slots']:6d}", f"{c['captions_judged']} captions judged"),
        ("kept", "one clear person", pct(k["precision"]), f"{k['one_clear_person']}/{k['samples']} samples"),
    ]
    urls = quality["urls"]
    lines = ["curation quality against the synthetic web's ground truth"]
    lines += [f"  {stage:<18} {name:<22} {value}  {count}" for stage, name, value, count in rows]
    fates = ", ".join(f"{stage} {n}" for stage, n in urls["by_final_stage"].items())
    verdict = "all accounted for" if urls["accounted"] else "NOT all accounted for"
    lines.append(f"  URLs {urls['rows']}: {fates} ({verdict})")
    return "\n".join(lines)
