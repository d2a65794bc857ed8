"""Evaluate a model on a benchmark split with the standard protocol, and print the paper's table layout.

Text→image: every caption of the split is a query, every image is in the gallery once. Features are computed in
batches and the similarity rows block by block (`blocked_rank_metrics`), so ICFG-PEDES never needs its full
19,848 × 19,848 matrix in memory.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gadms_model.data.benchmarks import EvalSplit, load_benchmark
from gadms_model.evaluation.metrics import METRIC_KEYS, blocked_rank_metrics
from storage.devices import default_device
from storage.errors import GadmsError

# Column order of the paper's tables: dataset blocks of R@1 / R@5 / R@10 / mAP (mINP added: it is standard too).
DATASET_TITLES = {"cuhk-pedes": "CUHK-PEDES", "icfg-pedes": "ICFG-PEDES", "rstpreid": "RSTPReid"}


@dataclass
class SplitFeatures:
    text: torch.Tensor  # captions × dim, L2-normalised
    image: torch.Tensor  # images × dim, L2-normalised


@torch.no_grad()
def encode_split(
    model,
    split: EvalSplit,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
) -> SplitFeatures:
    from gadms_model.data.loading import ImageFiles
    from gadms_model.data.transforms import eval_transform

    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    text_parts, image_parts = [], []
    with autocast:
        for start in tqdm(range(0, len(split.captions), batch_size), desc="text", disable=not progress, leave=False):
            ids = model.tokenizer(split.captions[start : start + batch_size]).to(device)
            text_parts.append(model.encode_text(ids).float().cpu())
        images = ImageFiles(split.image_paths, eval_transform(tuple(model.config.image_size)))
        loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers)
        for batch in tqdm(loader, desc="images", disable=not progress, leave=False):
            image_parts.append(model.encode_image(batch.to(device)).float().cpu())
    text = torch.nn.functional.normalize(torch.cat(text_parts), dim=1)
    image = torch.nn.functional.normalize(torch.cat(image_parts), dim=1)
    return SplitFeatures(text=text, image=image)


def evaluate_split(model, split: EvalSplit, device: torch.device | None = None, batch_size: int = 128,
                   num_workers: int = 0, progress: bool = True, i2t: bool = False) -> dict[str, float]:
    """Text→image R1/R5/R10/mAP/mINP of `model` on `split` (and image→text as `i2t_*` keys when asked)."""
    device = device or default_device()
    features = encode_split(model, split, device, batch_size, num_workers, progress)
    result = blocked_rank_metrics(
        lambda a, b: features.text[a:b] @ features.image.T, split.caption_pids, split.image_pids
    )
    if i2t:
        backwards = blocked_rank_metrics(
            lambda a, b: features.image[a:b] @ features.text.T, split.image_pids, split.caption_pids
        )
        result.update({f"i2t_{key}": value for key, value in backwards.items()})
    return result


def evaluate(
    checkpoint: str,
    dataset_name: str,
    root: str,
    split: str = "test",
    device: str | torch.device | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
    i2t: bool = False,
) -> dict[str, float]:
    """Metrics (percent) of a training checkpoint on `split` ("test" or "val") of a public benchmark."""
    from gadms_model.checkpoint import load_model

    device = torch.device(device) if device is not None else default_device()
    model = load_model(checkpoint, device)
    return evaluate_model(model, dataset_name, root, split, device, batch_size, num_workers, progress, i2t)


def evaluate_model(model, dataset_name: str, root: str, split: str = "test", device=None, batch_size: int = 128,
                   num_workers: int = 0, progress: bool = True, i2t: bool = False) -> dict[str, float]:
    benchmark = load_benchmark(dataset_name, root)
    chosen = getattr(benchmark, split, None) if split in ("val", "test") else None
    if chosen is None:
        raise GadmsError(f"{dataset_name}: no {split!r} split (ICFG-PEDES has train and test only)")
    return evaluate_split(model, chosen, device, batch_size, num_workers, progress, i2t)


def format_table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table in the paper's layout: one row per model, a column block per dataset.

    `rows` maps a model name to {dataset name: metrics}; datasets appear in the paper's order.
    """
    datasets = [d for d in DATASET_TITLES if any(d in per for per in rows.values())]
    header = ["Method"] + [f"{DATASET_TITLES[d]} {key.replace('R', 'R@')}" for d in datasets for key in METRIC_KEYS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_dataset in rows.items():
        cells = [name]
        for dataset in datasets:
            metrics = per_dataset.get(dataset)
            cells += [f"{metrics[key]:.2f}" if metrics else "–" for key in METRIC_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
