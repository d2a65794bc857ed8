"""The paper's claim where it can be measured here: training on noisy web captions, GA-DMS beats plain SDM.

On the synthetic web (curation.synthweb): train identities carry their noisy alt text as training captions
(spam, file names, foreign phrases, wrong colours mixed with real descriptions); held-out val identities select
the model (R@1), held-out test identities are queried with their clean captions, once, at the end. GA-DMS
(`mode: gadms`) and the baseline (`mode: sdm`, the same SDM alignment on raw captions, no masking, no MTP) train
with the same tiny model, data, seeds, budget and learning rate. Also measured: the mean GASS (per-caption
max-normalised, [0, 1]) of alt-text tokens that were injected noise versus tokens of the real description,
computed with each trained model on the training pairs.

    .venv/bin/python benchmarks/noisy_captions.py --seeds 0 1 2 --work-dir runs/noisy_captions
        [--device cuda] [--out benchmarks/results/noisy_captions.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gadms_model.data import load_benchmark
from gadms_model.data.loading import ImageFiles
from gadms_model.data.synthetic import write_synthetic_benchmark
from gadms_model.data.transforms import eval_transform
from gadms_model.evaluation import evaluate
from gadms_model.gass import gass_scores
from gadms_model.model import ModelConfig
from gadms_model.training import TrainConfig, train
from gadms_model.training.checkpoint import load_model


def token_word_flags(tokenizer, caption: str, noise: list[bool]) -> list[bool | None]:
    """Noise flag of each context position (None: SOT, EOT, padding, or a caption whose words do not align)."""
    flags: list[bool | None] = [None]
    for word, is_noise in zip(caption.split(), noise):
        flags += [is_noise] * len(tokenizer.encode(word))
    if len(flags) - 1 != len(tokenizer.encode(caption)):
        return []
    flags = flags[: tokenizer.context_length - 1]
    return flags + [None] * (tokenizer.context_length - len(flags))


@torch.no_grad()
def gass_by_token_kind(checkpoint: str, dataset_dir: Path, device: torch.device, batch_size: int = 64) -> dict:
    """Mean GASS of noise vs description tokens of the training alt texts, under the trained model."""
    model = load_model(checkpoint, device)
    noise_words = json.loads((dataset_dir / "noise_words.json").read_text())
    names = sorted(noise_words)
    transform = eval_transform(tuple(model.config.image_size))
    images = ImageFiles([str(dataset_dir / "imgs" / name) for name in names], transform)
    sums = {"noise": 0.0, "description": 0.0}
    counts = {"noise": 0, "description": 0}
    mixed_captions = noise_lower = 0
    mixed_means = {"noise": [], "description": []}
    for start in range(0, len(names), batch_size):
        chunk = names[start : start + batch_size]
        captions = [noise_words[n]["caption"] for n in chunk]
        ids = model.tokenizer(captions).to(device)
        pixels = torch.stack([images[start + i] for i in range(len(chunk))]).to(device)
        image_global = model.towers.image_tokens(pixels)[:, 0]
        scores = gass_scores(model.towers, ids, image_global, model.config.gass_layers, model.config.gass_normalisation).cpu()
        for row, name in enumerate(chunk):
            flags = token_word_flags(model.tokenizer, noise_words[name]["caption"], noise_words[name]["noise"])
            per_kind = {"noise": [], "description": []}
            for position, flag in enumerate(flags):
                if flag is not None:
                    per_kind["noise" if flag else "description"].append(float(scores[row, position]))
            for kind, values in per_kind.items():
                sums[kind] += sum(values)
                counts[kind] += len(values)
            if per_kind["noise"] and per_kind["description"]:
                mixed_captions += 1
                noise_lower += statistics.fmean(per_kind["noise"]) < statistics.fmean(per_kind["description"])
                for kind, values in per_kind.items():
                    mixed_means[kind].append(statistics.fmean(values))
    return {
        "mean_gass_noise_tokens": sums["noise"] / max(counts["noise"], 1),
        "mean_gass_description_tokens": sums["description"] / max(counts["description"], 1),
        "noise_tokens": counts["noise"],
        "description_tokens": counts["description"],
        "captions_with_both": mixed_captions,
        "share_of_those_where_noise_scores_lower": noise_lower / max(mixed_captions, 1),
        # Per-sample max normalisation makes pooled means depend on the caption mix (an all-noise caption's
        # best noise word scores 1): within captions that have both kinds is the like-for-like comparison.
        "within_mixed_captions_mean_gass_noise": statistics.fmean(mixed_means["noise"]) if mixed_captions else None,
        "within_mixed_captions_mean_gass_description":
            statistics.fmean(mixed_means["description"]) if mixed_captions else None,
    }


def mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def diagnose(args, device: torch.device) -> dict:
    """Is GASS informative at all in this setting? GASS of noise vs description words of the same alt texts under
    (a) a random-init model and (b) an SDM model trained on the clean captions of the same images."""
    from gadms_model.model import build_model
    from gadms_model.training import checkpoint as ckpt

    work = Path(args.work_dir) / "diagnose"
    height, width = args.image_size
    sizes = (args.train_identities, args.val_identities, args.test_identities, args.images_per_identity)
    for captions in ("clean", "alt_text"):  # same seed → the same images, two caption sets
        if not (work / captions / "RSTPReid").exists():
            write_synthetic_benchmark(work / captions, *sizes, seed=args.data_seed, train_captions=captions,
                                      size=(width, height))
    model_config = ModelConfig.tiny(mode="sdm", image_size=(height, width))
    torch.manual_seed(args.seeds[0])
    random_path = work / "random-init.pt"
    ckpt.save({"model_config": model_config.model_dump(mode="json"),
               "model": build_model(model_config).state_dict()}, random_path)
    clean_run = work / "clean-sdm"
    if not (clean_run / "final.pt").exists():
        train(TrainConfig.model_validate({
            "output_dir": str(clean_run),
            "data": {"kind": "benchmark", "path": str(work / "clean"), "benchmark": "rstpreid"},
            "model": model_config.model_dump(mode="json"), "epochs": args.epochs, "batch_size": args.batch_size,
            "num_workers": args.num_workers, "seed": args.seeds[0], "device": args.device, "progress": False,
            "optim": {"lr": args.lr, "eps": args.eps, "warmup_epochs": max(1, args.epochs // 6)},
            "augment": not args.no_augment,
        }))
    alt_dir = work / "alt_text" / "RSTPReid"
    clean_best = clean_run / "best.pt"
    return {
        "question": "does GASS score injected noise words below description words of the same alt texts?",
        "random_init": gass_by_token_kind(str(random_path), alt_dir, device),
        "sdm_trained_on_clean_captions": {
            "val": torch.load(clean_best, weights_only=True)["metrics"],
            "test": evaluate(str(clean_best), "rstpreid", str(work / "clean"), device=device, progress=False),
            "gass_on_alt_text": gass_by_token_kind(str(clean_best), alt_dir, device),
        },
        "setting": {"identities": sizes, "image_size": args.image_size, "epochs": args.epochs,
                    "batch_size": args.batch_size, "lr": args.lr, "adam_eps": args.eps, "augment": not args.no_augment},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="runs/noisy_captions")
    parser.add_argument("--out", default="benchmarks/results/noisy_captions.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["gadms", "sdm"])
    parser.add_argument("--train-identities", type=int, default=120)
    parser.add_argument("--val-identities", type=int, default=30)
    parser.add_argument("--test-identities", type=int, default=60)
    parser.add_argument("--images-per-identity", type=int, default=8)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 64], help="model input H W")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eps", type=float, default=1e-3, help="Adam eps (the recipe's 1e-3 is for pretrained CLIP)")
    parser.add_argument("--no-augment", action="store_true", help="resize + normalise only")
    parser.add_argument("--train-captions", default="alt_text", choices=["alt_text", "clean"],
                        help="clean: the upper bound without caption noise (a diagnostic, not the experiment)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--diagnose", action="store_true",
                        help="instead of the comparison: GASS of noise vs description words under a random-init and a "
                             "clean-caption-trained model; merged into --out under 'diagnostics'")
    args = parser.parse_args()
    if args.diagnose:
        device = torch.device("cuda" if args.device == "cuda" else "cpu")
        out = Path(args.out)
        existing = json.loads(out.read_text()) if out.exists() else {}
        existing["diagnostics"] = diagnose(args, device)
        out.write_text(json.dumps(existing, indent=2) + "\n")
        print(json.dumps(existing["diagnostics"], indent=2))
        return

    work = Path(args.work_dir)
    data_root = work / "data"
    height, width = args.image_size
    if not (data_root / "RSTPReid" / "data_captions.json").exists():
        write_synthetic_benchmark(data_root, args.train_identities, args.val_identities, args.test_identities,
                                  args.images_per_identity, seed=args.data_seed, train_captions=args.train_captions,
                                  size=(width, height))
    benchmark = load_benchmark("rstpreid", data_root)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")

    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    started = time.time()

    def write_results() -> dict:
        """Summary over the runs so far; rewritten after every run so an interrupted benchmark keeps them."""
        summary = {
            mode: {
                "R1": mean_std([r["test"]["R1"] for r in records]),
                "mAP": mean_std([r["test"]["mAP"] for r in records]),
                "R5": mean_std([r["test"]["R5"] for r in records]),
                "mean_gass_noise_tokens": mean_std([r["gass"]["mean_gass_noise_tokens"] for r in records]),
                "mean_gass_description_tokens": mean_std([r["gass"]["mean_gass_description_tokens"] for r in records]),
            }
            for mode, records in runs.items() if records
        }
        result = {
            "setting": {
                "data": "curation.synthweb identities; train captions = noisy alt text (or clean: diagnostic), test queries = clean captions",
                "train_images": len({s.image_id for s in benchmark.train}), "train_captions": len(benchmark.train),
                "train_identities": benchmark.num_train_ids,
                "val_images": len(benchmark.val.image_paths), "test_images": len(benchmark.test.image_paths),
                "test_queries": len(benchmark.test.captions),
                "model": f"ModelConfig.tiny(image_size=({height}, {width})), random init",
                "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "adam_eps": args.eps,
                "augment": not args.no_augment, "train_captions": args.train_captions, "seeds": args.seeds,
                "selection": "best val R@1 per run (val identities disjoint from test)",
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "platform": platform.machine(), "total_seconds": round(time.time() - started, 1),
            },
            "summary": summary,
            "runs": runs,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return summary

    for seed in args.seeds:
        for mode in args.modes:
            output_dir = work / f"{mode}-seed{seed}"
            config = TrainConfig.model_validate({
                "output_dir": str(output_dir),
                "data": {"kind": "benchmark", "path": str(data_root), "benchmark": "rstpreid"},
                "model": ModelConfig.tiny(mode=mode, image_size=(height, width)).model_dump(mode="json"),
                "epochs": args.epochs, "batch_size": args.batch_size, "num_workers": args.num_workers,
                "seed": seed, "device": args.device, "progress": False,
                "optim": {"lr": args.lr, "eps": args.eps, "warmup_epochs": max(1, args.epochs // 6)},
                "augment": not args.no_augment,
            })
            run_started = time.time()
            if (output_dir / "final.pt").exists():  # finished in an earlier invocation: reuse it
                checkpoint = str(output_dir / "best.pt")
                val_best = torch.load(checkpoint, weights_only=True)["metrics"]
            else:
                result = train(config)
                checkpoint, val_best = result.checkpoint_path, result.best_metrics
            test = evaluate(checkpoint, "rstpreid", str(data_root), split="test", device=device, progress=False)
            gass = gass_by_token_kind(checkpoint, data_root / "RSTPReid", device)
            record = {"seed": seed, "val_best": val_best, "test": test,
                      "gass": gass, "seconds": round(time.time() - run_started, 1)}
            runs[mode].append(record)
            print(json.dumps({"mode": mode, **record}), flush=True)
            summary = write_results()

    for mode, values in summary.items():
        print(f"{mode:6s} R@1 {values['R1']['mean']:.2f} ± {values['R1']['std']:.2f}   "
              f"mAP {values['mAP']['mean']:.2f} ± {values['mAP']['std']:.2f}   "
              f"GASS noise {values['mean_gass_noise_tokens']['mean']:.3f} vs description "
              f"{values['mean_gass_description_tokens']['mean']:.3f}")


if __name__ == "__main__":
    main()
