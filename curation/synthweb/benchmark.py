"""A benchmark tree in the RSTPReid release format, rendered by the synthetic web (curation.synthweb).

Used by tests, the search demo and benchmarks/noisy_captions.py: train identities carry their noisy alt text
(or clean captions) as training captions; val and test identities, disjoint from train and from each other,
carry clean captions as queries. `noise_words.json` beside the annotations keeps, for every train caption,
one flag per whitespace-separated word (True = injected noise), for measuring GASS on noise tokens.
Train captions "vlm" are the simulated VLM's own (curation.synthweb.vlm.fill_caption on a template of the bank,
in process, no HTTP), at a hallucination rate: their flags mark the hallucinated words, and
`hallucination_log.jsonl` keeps the VLM's log entries (slot, word, truth, word index) per caption.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from storage.errors import GadmsError


def write_synthetic_benchmark(
    root: str | Path,
    train_identities: int,
    val_identities: int,
    test_identities: int,
    images_per_identity: int,
    seed: int = 0,
    train_captions: Literal["alt_text", "described_alt_text", "clean", "coarse", "vlm"] = "alt_text",
    size: tuple[int, int] = (32, 64),
    first_identity: int = 0,
    query_captions: Literal["identity", "per_image", "coarse"] = "identity",
    templates: list[str] | None = None,
    hallucination_rate: float = 0.0,
) -> Path:
    """Write `<root>/RSTPReid/{data_captions.json, noise_words.json, imgs/}`; return the dataset directory.

    Identities are numbered train, then val, then test, from `first_identity` (pick a range no other data
    uses, e.g. far above a rendered web's identities, for a held-out split); `size` is (width, height) of the rendered crops.
    `query_captions` (val, test and clean train captions): "identity" gives every image of an identity the same
    canonical caption; "per_image" gives each image its own true description in varied wording, as the real
    benchmarks' annotators do (more distinct queries, so a metric is measured on more than one per identity);
    "coarse" gives gender and colours only. `train_captions` "coarse": the same for train (the demo CLIP's data).
    Train images whose alt text is empty are skipped (a captionless image cannot be a training pair);
    "described_alt_text" also skips those whose alt text has no word about the person (spam, file names), leaving
    only noise within captions. "vlm": one caption per train image from the simulated VLM's caption function
    with a template of `templates` (the caption stage's hash assignment of the image's name) and
    `hallucination_rate`; the template choice and the VLM's random stream depend on the image only, so the
    captions at rate 0 are the truth of those at any other rate, word for word except the hallucinated ones.
    """
    import random

    from curation.caption.prompts import Template, assign_templates
    from curation.synthweb.dataset import iter_identity_dataset
    from curation.synthweb.identities import identity_attributes
    from curation.synthweb.vlm import check_hallucination_rate, fill_caption, hallucinated_word_flags

    if train_captions == "vlm" and not templates:
        raise GadmsError("train_captions 'vlm' needs the template bank's texts (templates)")
    check_hallucination_rate(hallucination_rate)
    bank = [Template(id=str(k), text=text) for k, text in enumerate(templates or [])]
    log_lines: list[str] = []

    dataset_dir = Path(root) / "RSTPReid"
    images_dir = dataset_dir / "imgs"
    images_dir.mkdir(parents=True, exist_ok=True)
    records, noise_words = [], {}
    splits = (("train", first_identity, train_identities),
              ("val", first_identity + train_identities, val_identities),
              ("test", first_identity + train_identities + val_identities, test_identities))
    for split, first, count in splits:
        for number, sample in enumerate(iter_identity_dataset(count, images_per_identity, seed, size, first)):
            name = f"{split}/{sample.identity:05d}_{number % images_per_identity:02d}.jpg"
            if split == "train" and train_captions in ("alt_text", "described_alt_text"):
                caption, flags = sample.alt_text, list(sample.noise_words)
                if train_captions == "described_alt_text" and all(flags):
                    continue  # only alt texts that describe the person at least in part: noise within captions
            elif split == "train" and train_captions == "vlm":
                template = assign_templates(name, bank, 1, salt=f"synthweb-vlm-{seed}")[0].text
                rng = random.Random(f"synthweb-vlm-{seed}:{name}")
                caption, hallucinated = fill_caption(template, identity_attributes(sample.identity), "main", rng,
                                                     hallucination_rate)
                flags = hallucinated_word_flags(caption, hallucinated, f"{dataset_dir}: {name}")
                log_lines += [json.dumps({"img_path": name, "identity": sample.identity, "caption": caption, **entry})
                              for entry in hallucinated]
            elif (split == "train" and train_captions == "coarse") or (split != "train" and query_captions == "coarse"):
                caption, flags = sample.coarse, [False] * len(sample.coarse.split())
            else:
                caption = sample.described if query_captions == "per_image" else sample.clean_caption
                flags = [False] * len(caption.split())
            if not caption.strip():
                continue
            (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
            sample.image.save(images_dir / name, quality=95)
            records.append({"id": sample.identity, "img_path": name, "captions": [caption], "split": split})
            if split == "train":
                noise_words[name] = {"caption": caption, "noise": flags}
    if not records:
        raise GadmsError(f"{dataset_dir}: no identities to write")
    (dataset_dir / "data_captions.json").write_text(json.dumps(records, indent=0), encoding="utf-8")
    (dataset_dir / "noise_words.json").write_text(json.dumps(noise_words), encoding="utf-8")
    if train_captions == "vlm":
        (dataset_dir / "hallucination_log.jsonl").write_text("".join(line + "\n" for line in log_lines),
                                                             encoding="utf-8")
    return dataset_dir
