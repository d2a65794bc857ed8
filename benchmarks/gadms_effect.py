"""The GA-DMS effect where the paper has it: an aligned start, MLLM-style captions with hallucinated words, and
the cost of that noise measured first (issue 15).

Data (curation.synthweb, rendered in process): train identities numbered from FIRST_IDENTITY (disjoint from the
web's, the demo's held-out benchmark's and the demo CLIP's), then val and test identities disjoint from train
and from each other. Each train image has one caption from the simulated VLM's own caption function
(curation.synthweb.vlm.fill_caption) with a template of prompts/templates.jsonl assigned as the caption stage
assigns them, at hallucination rate 0 (`sdm-clean`) or r (the noisy set): the same images, templates and random
stream, so the two differ only in the hallucinated words, which the VLM's log names (noise_words.json flags,
hallucination_log.jsonl). With --data synthetic (the default) the training set is written directly by the
synthetic benchmark writer: the captions are exactly the simulated VLM's, without the crawl, detection and HTTP in
between. With --data pipeline it is what the build-webperson flow makes of a served synthetic web of --web-images
scenes (the demo's build: crawl, detection and pose rules, dedup, the MLLM filter and two template captions per
crop from the simulated VLM over the OpenAI protocol), built once per rate; training reads the shards, and each
pair's hallucinated words come from that build's VLM log (write_pair_labels). The two builds keep the same crops
but for timing faults and the caption quality check (`samples_in_both_builds`). Val and test queries are each
image's own true description (several per identity), of identities no build or training set contains.

Every run starts from the demo CLIP (flows.demo_clip.demo_clip_model_config: the shipped
curation/synthweb/weights/synthweb-clip-demo, which knows gender and colours only) with the same seeds, lr,
batch and epochs. Arms:

- `sdm-clean`: SDM on the rate-0 captions: what the noise costs is sdm-clean minus sdm.
- `sdm`: SDM on the noisy captions (the baseline).
- `gadms`: GA-DMS as the paper (GASS-guided dual masking + MTP).
- `gadms-oracle`: GA-DMS with masks from the hallucination log (1 for true words, 0 for hallucinated).
- `gadms-oracle-full`: the oracle with alpha_noise 1 (a hallucinated word is masked ~88 % of the time).
- `gadms-constant`: every score 0.85: no noise masking, random MTP masks (MTP alone).

The cost of noise first: sdm-clean and sdm at the first --rates value, all seeds; the gap on val R@1 must be at
least 3 x the seed std of either arm, else the next rate is tried (val only; test never chooses). The other
arms then run at the chosen rate. Each run keeps its best val epoch; its test metrics are computed once and
stored beside it (test.json). For each arm: the share of the test gap it closes, (arm - sdm) / (sdm-clean - sdm),
per seed against the two arms' means, mean +- std. GASS quality (the within-caption AUROC of a true word over a
hallucinated one, pooled AUROCs and mean scores under per-caption and batch normalisation) from the aligned
start and from every trained run; for `sdm` and `gadms` also at every epoch's checkpoint (gass_during_training),
and for `gadms` from its score store there too: the scores its masks were drawn from.

    nice -n 10 .venv/bin/python benchmarks/gadms_effect.py --work-dir runs/gadms_effect --jobs 2
        [--data pipeline --web-images 1000]
        [--rates 0.5 1.0] [--seeds 0 1 2] [--epochs 8] [--model JSON --image-size 384 128 --device cuda]

Finished runs in --work-dir are reused, not retrained (delete the folder after changing data options).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.noisy_captions import (ARMS, GASS_KEYS, gass_by_token_kind, mean_std, run_training,  # noqa: E402
                                       score_store_quality, token_labels, train_token_labels, write_oracle_scores)
from curation.caption.backends import jpeg_for_model  # noqa: E402
from curation.caption.config import CaptionConfig  # noqa: E402
from curation.caption.prompts import load_templates  # noqa: E402
from curation.synthweb import render_site, write_url_list  # noqa: E402
from curation.synthweb.benchmark import write_synthetic_benchmark  # noqa: E402
from curation.synthweb.vlm import (SimulatedVlm, SimulatedVlmServer, hallucinated_word_flags,  # noqa: E402
                                   read_hallucination_log)
from flows.demo_clip import TINY_MODEL_ADAM_EPS, demo_clip_model_config  # noqa: E402
from gadms_model import checkpoint as ckpt  # noqa: E402
from gadms_model.data import load_benchmark  # noqa: E402
from gadms_model.data.sources import webperson_source  # noqa: E402
from gadms_model.evaluation import evaluate  # noqa: E402
from gadms_model.model import ModelConfig, build_model  # noqa: E402

# Above the web (< 1,000,000), the demo's held-out benchmark (1,000,000 + 60) and the demo CLIP (2,000,000 ..).
FIRST_IDENTITY = 3_000_000
NOISY_ARMS = ("sdm", "gadms", "gadms-oracle", "gadms-oracle-full", "gadms-constant")
DEFAULT_ARMS = ("sdm-clean", *NOISY_ARMS)
# Arms whose GASS is read at every epoch's checkpoint: the baseline and the paper's method (whose score store,
# the scores its masks were drawn from, is read too).
TRACED_ARMS = ("sdm", "gadms")
TRACE_KEYS = ("within_caption_auroc_description_over_noise", "pooled_auroc_description_over_noise",
              "batch_normalised_pooled_auroc_description_over_noise", "mean_gass_noise_tokens",
              "mean_gass_description_tokens")
METRICS = ("R1", "R5", "R10", "mAP")
# --data pipeline serves its synthetic web here when the port is free (else on a free one): the build's shard ids
# digest the URL list's rows, so on this port the rate-0 and rate-r builds get the same shard ids.
PIPELINE_SITE_PORT = 18322


@dataclass(frozen=True)
class TrainingData:
    """One caption set: what its runs train on, the benchmark they are selected and tested on, and the labels
    of its training pairs."""

    train: dict  # TrainConfig.data
    benchmark_root: Path  # RSTPReid-format val and test splits
    labels_dir: Path  # noise_words.json (each training pair's caption and hallucinated-word flags) and imgs/

    def noise_words(self) -> dict[str, dict]:
        """{image name: {caption, noise}}, one entry per training pair."""
        return json.loads((self.labels_dir / "noise_words.json").read_text())

    def token_labels(self, context_length: int) -> list[list[bool | None]]:
        """train_token_labels of every training pair, in the trainer's order."""
        if self.train["kind"] == "benchmark":
            return train_token_labels(Path(self.train["path"]), context_length)
        return token_labels(self.labels_dir, list(self.noise_words()), context_length)  # written in pair order


def write_pair_labels(output_root: Path, log_path: Path, labels_dir: Path, image_max_side: int) -> dict:
    """Each training pair of a WebPerson output root, in the trainer's order (shards in shard-id order, rows in
    order, caption1 then caption2: ShardSource.raw_pair), as `labels_dir`/imgs/<pair>.jpg and
    noise_words.json {name: {caption, noise: one flag per word, sample_id}}. The flags come from the simulated
    VLM's hallucination log, whose entries name the sha256 of the JPEG the caption stage sent (the crop as
    jpeg_for_model gives it) and the caption; an entry that does not fit its caption is an error."""
    logged: dict[tuple[str, str], dict[int, dict]] = {}
    if log_path.exists():
        for entry in read_hallucination_log(log_path):  # a resent request logs its words again: one per index
            logged.setdefault((entry["image_sha256"], entry["caption"]), {})[entry["word_index"]] = entry
    (labels_dir / "imgs").mkdir(parents=True, exist_ok=True)
    noise_words: dict[str, dict] = {}
    matched: set[tuple[str, str]] = set()
    source = webperson_source(str(output_root))
    for pair in range(source.num_pairs):
        image, caption, sample_id = source.raw_pair(pair)
        if pair % source.captions_per_image == 0:  # the image's first pair
            sent = hashlib.sha256(jpeg_for_model(image, image_max_side)).hexdigest()
        name = f"{pair:07d}.jpg"
        words = logged.get((sent, caption), {})
        if words:
            matched.add((sent, caption))
        flags = hallucinated_word_flags(caption, list(words.values()), f"{log_path}: sample {sample_id}")
        (labels_dir / "imgs" / name).write_bytes(image)
        noise_words[name] = {"caption": caption, "noise": flags, "sample_id": sample_id}
    (labels_dir / "noise_words.json").write_text(json.dumps(noise_words) + "\n")
    return {"pairs": len(noise_words), "logged_captions": len(logged), "logged_captions_in_shards": len(matched)}


def build_pipeline_data(folder: Path, site_root: Path, rate: float, heldout: Path) -> TrainingData:
    """The build-webperson flow over the served synthetic web in `site_root`, captioned by the simulated VLM
    over the OpenAI protocol at hallucination `rate` (its log beside the shards), as the demo builds; reused
    once finished (built.json). An unfinished build folder is built again from the start: its log must hold
    exactly the requests of its shards."""
    data = TrainingData({"kind": "webperson", "path": str(folder / "webperson")}, heldout, folder / "pair_labels")
    done = folder / "built.json"
    if done.exists():
        return data
    # Imported here: --data synthetic runs where Prefect is not installed (a GPU host with the model's packages only).
    from flows.build_webperson import build_webperson
    from flows.demo import demo_build_config, demo_site_server

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    log = folder / "hallucination_log.jsonl"
    vlm = SimulatedVlm(site_root, rate, log)
    with demo_site_server(site_root, PIPELINE_SITE_PORT) as site, SimulatedVlmServer(vlm) as vlm_server:
        urls = folder / "urls.parquet"
        write_url_list(site_root, site.base_url, urls)
        config = demo_build_config(urls, folder / "webperson", vlm_server.base_url, guarded_benchmark=heldout)
        summary = build_webperson(config)
    labels = write_pair_labels(folder / "webperson", log, data.labels_dir,
                               CaptionConfig.model_validate(config["caption"]).image_max_side)
    done.write_text(json.dumps({"hallucination_rate": rate, "labels": labels, "build": summary}, default=str) + "\n")
    return data


def gap_closed(arm: list[float], noisy: list[float], clean: list[float]) -> dict | None:
    """Share of the clean-to-noisy gap an arm closes, per seed: (arm_s - mean noisy) / (mean clean - mean noisy);
    mean and sample std over seeds. 0 = no better than the noisy baseline, 1 = as good as clean captions.
    None when the gap is not positive (there is nothing to close)."""
    gap = statistics.fmean(clean) - statistics.fmean(noisy)
    if gap <= 0:
        return None
    noisy_mean = statistics.fmean(noisy)
    return mean_std([(value - noisy_mean) / gap for value in arm])


def noise_gap(clean: list[float], noisy: list[float]) -> dict:
    """The cost of noise: mean clean - mean noisy, against 3 x the larger of the two seed stds."""
    gap = statistics.fmean(clean) - statistics.fmean(noisy)
    spread = max(statistics.stdev(clean) if len(clean) > 1 else 0.0,
                 statistics.stdev(noisy) if len(noisy) > 1 else 0.0)
    return {"gap": gap, "max_seed_std": spread, "gap_over_std": gap / spread if spread else None,
            "at_least_3_std": gap >= 3 * spread and gap > 0}


def model_config(args, arm: str) -> ModelConfig:
    mode, overrides, _ = ARMS["sdm" if arm == "sdm-clean" else arm]
    if args.model:  # e.g. CLIP ViT-B/16 from a local checkpoint, on a GPU: the paper's setting
        return ModelConfig(**{**json.loads(args.model), "image_size": tuple(args.image_size), "mode": mode,
                              **overrides})
    return demo_clip_model_config(mode=mode, **overrides)


def run_spec(args, work: Path, data: TrainingData, arm: str, rate: float, seed: int, oracle: Path) -> dict:
    return {
        "output_dir": str(work / f"{arm}-r{rate:g}-seed{seed}"),
        "data": data.train,
        "validation": {"dataset": "rstpreid", "root": str(data.benchmark_root)},
        "model": model_config(args, arm).model_dump(mode="json"),
        "token_scores": str(oracle) if ARMS["sdm" if arm == "sdm-clean" else arm][2] else None,
        "epochs": args.epochs, "batch_size": args.batch_size, "num_workers": 0,
        "seed": seed, "device": args.device, "progress": False,
        "optim": {"lr": args.lr, "eps": args.eps, "warmup_epochs": 0.5},
        "augment": True,
        # A traced arm keeps every epoch's state until its GASS has been read at each (train_run)
        **({"keep_checkpoints": args.epochs + 1} if arm in TRACED_ARMS else {}),
    }


def train_run(job: dict) -> dict:
    """Train one run (noisy_captions.run_training, which reuses a finished one). A traced run (`job["trace"]`:
    gass_trace's job) then has its GASS read at every epoch's state. The states are deleted once the run is done
    (best.pt and final.pt stay): only a resumed run or the trace needs them, and for CLIP ViT-B/16 each is ~1.8 GB
    (the weights and Adam's two moments), 18 runs x 4 epochs more than a GPU host's disk."""
    run = run_training(job["spec"])
    if job["trace"] is not None:
        run["trace"] = gass_trace(job["trace"])
    for path in ckpt.step_checkpoints(Path(job["spec"]["output_dir"]) / "checkpoints"):
        path.unlink()
    return run


def gass_trace(job: dict) -> list[dict]:
    """GASS quality at each kept step checkpoint of a finished run (one per epoch), on its noisy train captions:
    the model's own GASS (as gass_by_token_kind reads it) and, for GA-DMS (given its `token_labels`), its score
    store. Cached beside the run (gass_trace.json)."""
    output_dir, dataset_dir = Path(job["output_dir"]), Path(job["labels_dir"])
    stored = output_dir / "gass_trace.json"
    if stored.exists():
        return json.loads(stored.read_text())
    torch.set_num_threads(1)  # traces run beside each other in the pool
    device = torch.device(job["device"])
    labels = job["token_labels"]  # None: the run has no score store to read
    trace = []
    for path in ckpt.step_checkpoints(output_dir / "checkpoints"):
        payload = ckpt.load(path)
        gass = gass_by_token_kind(path, dataset_dir, device)
        point = {"step": payload["step"], **{key: gass[key] for key in TRACE_KEYS}}
        if labels is not None:
            quality = score_store_quality(payload["score_store"]["scores"], labels)
            point.update({f"score_store_{key}": value for key, value in quality.items()})
        trace.append(point)
    stored.write_text(json.dumps(trace) + "\n")
    return trace


def trace_summary(traces: list[list[dict]]) -> list[dict]:
    """Per step, mean +- std over seeds of each traced value; the seeds' runs checkpoint at the same steps."""
    steps = [[point["step"] for point in trace] for trace in traces]
    if any(s != steps[0] for s in steps):
        raise ValueError(f"seeds checkpointed at different steps: {steps}")
    return [{"step": points[0]["step"],
             **{key: mean_std([p[key] for p in points]) for key in points[0] if key != "step"}}
            for points in zip(*traces)]


def test_once(run: dict, data_root: Path, device: torch.device) -> dict:
    """Test metrics of a finished run's chosen checkpoint, computed once and kept beside it."""
    stored = Path(run["checkpoint"]).parent / "test.json"
    if stored.exists():
        return json.loads(stored.read_text())
    metrics = evaluate(run["checkpoint"], "rstpreid", str(data_root), split="test", device=device, progress=False)
    stored.write_text(json.dumps(metrics) + "\n")
    return metrics


MASK_KEYS = ("noise_mask_rate", "mtp_mask_rate", "gass_noise_masked", "gass_informative_masked")


def mask_rates(output_dir: Path) -> dict:
    """Means over a run's training steps (metrics.jsonl) of its masking rates and of the mean score of the tokens
    each branch masked; empty for an arm that masks nothing (SDM)."""
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line.get("kind") == "train"]
    return {key: statistics.fmean(line[key] for line in steps) for key in MASK_KEYS
            if steps and all(key in line for line in steps)}


def start_metrics(args, clean_root: Path, device: torch.device) -> dict:
    """The aligned start itself (no training) on val and test: what every arm starts from. A fixed model, so its
    test figures choose nothing."""
    from gadms_model.evaluation import evaluate_model

    model = build_model(model_config(args, "sdm")).to(device).eval()
    return {split: evaluate_model(model, "rstpreid", str(clean_root), split, device, progress=False)
            for split in ("val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", default="runs/gadms_effect")
    parser.add_argument("--out", default="benchmarks/results/gadms_effect.json")
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=["sdm-clean", *NOISY_ARMS])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 1.0],
                        help="hallucination rates tried in turn until the val gap is >= 3 seed std")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (best val epoch kept)")
    parser.add_argument("--lr", type=float, default=5e-4, help="the demo's lr for the demo CLIP")
    parser.add_argument("--eps", type=float, default=TINY_MODEL_ADAM_EPS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "pipeline"],
                        help="synthetic: train captions written in process; pipeline: shards built by the "
                             "build-webperson flow from a served synthetic web, captioned by the simulated VLM "
                             "over HTTP (--web-images scenes)")
    parser.add_argument("--web-images", type=int, default=1000, help="--data pipeline: scenes of the web")
    parser.add_argument("--train-identities", type=int, default=300, help="--data synthetic: train identities")
    parser.add_argument("--val-identities", type=int, default=60)
    parser.add_argument("--test-identities", type=int, default=100)
    parser.add_argument("--images-per-identity", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--templates", default=str(Path(__file__).resolve().parents[1] / "prompts/templates.jsonl"))
    parser.add_argument("--image-size", type=int, nargs=2, default=[128, 64], help="H W (with --model)")
    parser.add_argument("--jobs", type=int, default=2, help="runs trained at once (processes, 1 thread each)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--model", help="ModelConfig fields as JSON instead of the demo CLIP, e.g. "
                                        "'{\"clip_model\": \"ViT-B-16\", \"pretrained\": \"ViT-B-16.pt\"}'")
    args = parser.parse_args()
    if "sdm-clean" not in args.arms or "sdm" not in args.arms:
        parser.error("--arms needs sdm-clean and sdm: the gap between them is what the other arms are measured by")

    started = time.time()
    work = Path(args.work_dir)
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    height, width = args.image_size if args.model else demo_clip_model_config().image_size
    templates = [t.text for t in load_templates(args.templates)]
    context_length = model_config(args, "sdm").context_length

    def heldout_root() -> Path:
        """--data pipeline: val and test alone, the identities --data synthetic gives them, the same images."""
        root = work / "heldout"
        if not (root / "RSTPReid" / "data_captions.json").exists():
            write_synthetic_benchmark(root, 0, args.val_identities, args.test_identities, args.images_per_identity,
                                      seed=args.data_seed, train_captions="clean", size=(width, height),
                                      first_identity=FIRST_IDENTITY + args.train_identities,
                                      query_captions="per_image")
        return root

    def site_root() -> Path:
        root = work / "site"
        if not (root / "rendered.json").exists():
            if root.exists():
                shutil.rmtree(root)
            render_site(root / "web", images=args.web_images, seed=args.data_seed)
            (root / "rendered.json").write_text(json.dumps({"images": args.web_images, "seed": args.data_seed}))
        return root / "web"

    @functools.cache  # built or written once; later calls (oracle, traces, summary) reuse it
    def data(rate: float) -> TrainingData:
        if args.data == "pipeline":
            return build_pipeline_data(work / f"web-r{rate:g}", site_root(), rate, heldout_root())
        root = work / f"data-r{rate:g}"
        if not (root / "RSTPReid" / "data_captions.json").exists():
            write_synthetic_benchmark(root, args.train_identities, args.val_identities, args.test_identities,
                                      args.images_per_identity, seed=args.data_seed, train_captions="vlm",
                                      size=(width, height), first_identity=FIRST_IDENTITY,
                                      query_captions="per_image", templates=templates, hallucination_rate=rate)
        return TrainingData({"kind": "benchmark", "path": str(root), "benchmark": "rstpreid"}, root,
                            root / "RSTPReid")

    def oracle_scores(rate: float) -> tuple[Path, dict]:
        path = work / f"oracle-token-scores-r{rate:g}.pt"
        return path, write_oracle_scores(data(rate).token_labels(context_length), path, context_length)

    clean = data(0.0)
    benchmark = load_benchmark("rstpreid", clean.benchmark_root)
    train_pairs = len(clean.noise_words())
    if args.data == "pipeline":
        described = (f"the build-webperson flow (crawl, detection, dedup, filter, two captions per crop from the "
                     f"simulated VLM over the OpenAI protocol) over a served synthetic web of {args.web_images} "
                     f"scenes (identities below 1,000,000); val/test: identities from "
                     f"{FIRST_IDENTITY + args.train_identities:,}, queries each image's own true description")
    else:
        described = ("curation.synthweb identities from 3,000,000; train captions: the simulated VLM's fill_caption "
                     "with prompts/templates.jsonl (one per image, the caption stage's assignment), in process; "
                     "val/test queries: each image's own true description")
    result: dict = {
        "setting": {
            "data": described, "data_kind": args.data,
            **({"web_images": args.web_images} if args.data == "pipeline" else
               {"train_identities": args.train_identities}),
            "train_captions": train_pairs,
            "val_identities": args.val_identities, "val_queries": len(benchmark.val.captions),
            "test_identities": args.test_identities, "test_images": len(benchmark.test.image_paths),
            "test_queries": len(benchmark.test.captions),
            "model": args.model or "demo CLIP (curation/synthweb/weights/synthweb-clip-demo), gadms-tiny 128x64",
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "adam_eps": args.eps,
            "seeds": args.seeds, "arms": args.arms, "rates_tried_in_turn": args.rates,
            "selection": "each run at its best val R@1 epoch; the rate: the first of --rates whose val R@1 gap "
                         "(sdm-clean - sdm) is >= 3 x either arm's seed std; test evaluated once per reported run",
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "platform": platform.machine(), "load_average_at_start": os.getloadavg(),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        result["setting"]["total_seconds"] = round(time.time() - started, 1)
        result["setting"]["load_average_at_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=2) + "\n")

    runs: dict[tuple[str, float], list[dict]] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        def train_arms(arms: list[str], rate: float) -> None:
            noisy = data(rate)
            oracle, _ = oracle_scores(rate)
            labels = noisy.token_labels(context_length) if "gadms" in arms else None
            todo = [(arm, seed) for arm in arms for seed in args.seeds]
            jobs = []
            for arm, seed in todo:
                spec = run_spec(args, work, clean if arm == "sdm-clean" else noisy, arm,
                                0.0 if arm == "sdm-clean" else rate, seed, oracle)
                trace = {"output_dir": spec["output_dir"], "labels_dir": str(noisy.labels_dir),
                         "token_labels": labels if arm == "gadms" else None, "device": str(device)}
                jobs.append({"spec": spec, "trace": trace if arm in TRACED_ARMS else None})
            for (arm, seed), run in zip(todo, pool.map(train_run, jobs)):
                runs.setdefault((arm, 0.0 if arm == "sdm-clean" else rate), []).append({"seed": seed, **run})

        def trace_arms(rate: float) -> dict:
            return {arm: trace_summary([run["trace"] for run in sorted(runs[(arm, rate)], key=lambda r: r["seed"])])
                    for arm in TRACED_ARMS if arm in args.arms}

        result["rate_selection_val_R1"] = {}
        chosen = None
        for rate in args.rates:
            train_arms(["sdm-clean", "sdm"] if ("sdm-clean", 0.0) not in runs else ["sdm"], rate)
            clean_val = [r["val_best"]["R1"] for r in runs[("sdm-clean", 0.0)]]
            noisy_val = [r["val_best"]["R1"] for r in runs[("sdm", rate)]]
            verdict = noise_gap(clean_val, noisy_val)
            result["rate_selection_val_R1"][f"r={rate:g}"] = {"sdm-clean": mean_std(clean_val),
                                                              "sdm": mean_std(noisy_val), **verdict}
            save()
            print(f"rate {rate:g}: val R@1 gap {verdict['gap']:.2f} (max seed std {verdict['max_seed_std']:.2f})",
                  flush=True)
            if verdict["at_least_3_std"]:
                chosen = rate
                break
        if chosen is None:  # none passed: report the largest gap measured, and say so
            chosen = max(args.rates, key=lambda r: result["rate_selection_val_R1"][f"r={r:g}"]["gap"])
        result["setting"]["hallucination_rate"] = chosen
        result["setting"]["rate_passed_val_gap_check"] = bool(
            result["rate_selection_val_R1"][f"r={chosen:g}"]["at_least_3_std"])
        others = [arm for arm in args.arms if arm not in ("sdm-clean", "sdm")]
        train_arms(others, chosen)
        result["gass_during_training"] = trace_arms(chosen)

    noisy = data(chosen)
    _, oracle_info = oracle_scores(chosen)
    flags = noisy.noise_words()
    result["setting"]["noisy_captions"] = {
        "captions": len(flags),
        "captions_with_a_hallucination": sum(any(v["noise"]) for v in flags.values()),
        "words": sum(len(v["noise"]) for v in flags.values()),
        "hallucinated_words": sum(sum(v["noise"]) for v in flags.values()),
        "oracle_scores": oracle_info,
    }
    if args.data == "pipeline":
        # The two builds crawl, detect and filter alike but for timing faults (a slow URL times out in one) and
        # the caption quality check (a caption too short at rate 0 may pass with a hallucinated word, or not).
        samples = {rate: {entry["sample_id"] for entry in data(rate).noise_words().values()}
                   for rate in (0.0, chosen)}
        result["setting"]["builds"] = {
            f"r={rate:g}": {**json.loads((work / f"web-r{rate:g}" / "built.json").read_text())["labels"],
                            "samples": len(samples[rate]), "samples_in_both_builds": len(samples[0.0] & samples[chosen])}
            for rate in sorted({0.0, chosen})}
    result["aligned_start_metrics"] = start_metrics(args, clean.benchmark_root, device)
    start = build_model(model_config(args, "gadms"))
    result["gass_aligned_start"] = gass_by_token_kind(start, noisy.labels_dir, device)
    save()

    result["runs"], result["summary"] = {}, {}
    for arm in args.arms:
        rate = 0.0 if arm == "sdm-clean" else chosen
        records = []
        for run in sorted(runs[(arm, rate)], key=lambda r: r["seed"]):
            test = test_once(run, (clean if arm == "sdm-clean" else noisy).benchmark_root, device)
            records.append({"seed": run["seed"], "hallucination_rate": rate, "val_best": run["val_best"],
                            "test": test, "seconds": run["seconds"],
                            "mask_rates": mask_rates(Path(run["checkpoint"]).parent),
                            "gass": gass_by_token_kind(run["checkpoint"], noisy.labels_dir, device)})
        result["runs"][arm] = records
        result["summary"][arm] = {
            "val_R1": mean_std([r["val_best"]["R1"] for r in records]),
            **{key: mean_std([r["test"][key] for r in records]) for key in METRICS},
            "gass": {key: mean_std([r["gass"][key] for r in records]) for key in GASS_KEYS},
            "mask_rates": {key: mean_std([r["mask_rates"].get(key) for r in records]) for key in MASK_KEYS},
        }
    clean_test = {key: [r["test"][key] for r in result["runs"]["sdm-clean"]] for key in METRICS}
    noisy_test = {key: [r["test"][key] for r in result["runs"]["sdm"]] for key in METRICS}
    result["noise_gap_test"] = {key: noise_gap(clean_test[key], noisy_test[key]) for key in METRICS}
    for arm in args.arms:
        result["summary"][arm]["gap_closed"] = {
            key: gap_closed([r["test"][key] for r in result["runs"][arm]], noisy_test[key], clean_test[key])
            for key in METRICS}
    save()
    gap = result["noise_gap_test"]["R1"]
    print(f"hallucination rate {chosen:g}: test R@1 gap {gap['gap']:.2f} ({gap['gap_over_std']} x seed std)")
    for arm in args.arms:
        s = result["summary"][arm]
        closed = s["gap_closed"]["R1"]
        print(f"{arm:18s} test R@1 {s['R1']['mean']:.2f} ± {s['R1']['std']:.2f}  mAP {s['mAP']['mean']:.2f} ± "
              f"{s['mAP']['std']:.2f}  gap closed (R@1) "
              + (f"{closed['mean']:.2f} ± {closed['std']:.2f}" if closed else "-"), flush=True)


if __name__ == "__main__":
    main()
