"""The training loop: pre-training (GA-DMS) and fine-tuning (IRRA) from one TrainConfig, on CPU, one GPU or
torchrun DDP.

Exactness of `--resume`: the sampler order depends on (seed, epoch), each pair's augmentation on
(seed, epoch, index), and each micro-batch's masking generator on (seed, rank, micro-step); checkpoints are
written at optimiser-step boundaries with model, optimiser, scheduler, score store, counters and RNG states.
A resumed run therefore repeats the uninterrupted run's losses step for step.

Outputs under `output_dir`:
    config.yaml                  the validated config
    checkpoints/step-XXXXXXXX.pt full training state (the last `keep_checkpoints`)
    best.pt                      model of the best validation epoch (when there is a validation split)
    final.pt                     model at the end of training
    metrics.jsonl                one line per optimiser step ("train") and per validation ("val")
    tensorboard/                 the same scalars for TensorBoard
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gadms_model import checkpoint as ckpt
from gadms_model.training.config import TrainConfig
from gadms_model.training.distributed import (
    ProcessInfo,
    barrier,
    distributed,
    gather_objects,
    init_process,
    mean_across_ranks,
)
from gadms_model.training.schedule import lr_factor
from storage.configfile import dump_config, load_config
from storage.devices import default_device
from storage.errors import GadmsError

# Fields that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = {"output_dir", "max_steps", "progress", "num_workers", "log_every_steps", "checkpoint_every_steps",
                     "keep_checkpoints", "epochs"}
# Devices where torch's fused Adam kernel runs (torch.utils._foreach_utils lists them; others take the loop).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


@dataclass
class TrainResult:
    checkpoint_path: str  # best.pt when a validation split selected a model, else final.pt
    metrics_path: str
    best_metrics: dict | None  # validation metrics of checkpoint_path (None without validation)
    last_checkpoint_path: str  # the latest full training checkpoint
    steps: int


def build_source(config: TrainConfig):
    from gadms_model.data import BenchmarkSource, JsonImageSource, load_benchmark, public_parquet_source, webperson_source

    data = config.data
    if data.kind == "webperson":
        return webperson_source(data.path)
    if data.kind == "public":
        return JsonImageSource(data.path) if data.path.endswith(".json") else public_parquet_source(data.path)
    return BenchmarkSource(load_benchmark(data.benchmark, data.path).train)


def validation_split(config: TrainConfig):
    """(name, EvalSplit) used for model selection, or None. Always a val split, never test."""
    from gadms_model.data import load_benchmark

    if config.validation is not None:
        split = load_benchmark(config.validation.dataset, config.validation.root).val
        if split is None:
            raise GadmsError(f"validation: {config.validation.dataset} has no val split (choose another dataset)")
        return config.validation.dataset, split
    if config.data.kind == "benchmark":
        split = load_benchmark(config.data.benchmark, config.data.path).val
        if split is not None:
            return config.data.benchmark, split
    return None


def select_device(config: TrainConfig, process: ProcessInfo) -> torch.device:
    kind = default_device().type if config.device == "auto" else config.device
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise GadmsError("device: 'cuda' asked for, but no GPU is available")
        return torch.device("cuda", process.local_rank)
    return torch.device("cpu")


def parameter_groups(model: torch.nn.Module, optim) -> list[dict]:
    """IRRA's groups: CLIP towers at lr, new modules at lr × new_module_lr_factor; biases × bias_lr_factor and
    without weight decay when bias_lr_factor != 1 (as in IRRA)."""
    from gadms_model.towers import ClipTowers

    backbone = {id(p) for m in model.modules() if isinstance(m, ClipTowers) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            key = (id(parameter) in backbone, name.endswith(".bias"))
            groups.setdefault(key, []).append(parameter)
    result = []
    for (is_backbone, is_bias), params in sorted(groups.items()):
        lr = optim.lr * (1.0 if is_backbone else optim.new_module_lr_factor)
        decay = optim.weight_decay
        if is_bias and optim.bias_lr_factor != 1.0:
            lr, decay = lr * optim.bias_lr_factor, 0.0
        result.append({"params": params, "lr": lr, "weight_decay": decay})
    return result


class JsonlLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines the interrupted run wrote after its last checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short when the run was killed
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _check_resumable(saved_path: Path, config: TrainConfig) -> None:
    saved = load_config(saved_path, TrainConfig).model_dump(mode="json")
    current = config.model_dump(mode="json")
    changed = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved.get(k) != current[k])
    if changed:
        raise GadmsError(f"{saved_path}: cannot resume with a different {', '.join(changed)} (run's saved config differs)")


def _scalars(outputs: dict) -> dict[str, float]:
    """One-number entries of the model's outputs; NaN marks a statistic with nothing to average this step."""
    return {key: float(value.detach()) for key, value in outputs.items() if isinstance(value, torch.Tensor) and value.numel() == 1}


@dataclass
class TrainingRun:
    """Everything one run holds between its set-up, its epochs and its checkpoints."""

    config: TrainConfig
    process: ProcessInfo
    device: torch.device
    autocast: object  # a context manager: bf16 autocast on GPU, else nothing
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, DDP-wrapped when distributed
    model_config: object  # the model's resolved ModelConfig (activation chosen): what checkpoints record
    dataset: object
    sampler: object
    score_store: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    steps_per_epoch: int
    total_steps: int  # the steps this run stops at (epochs × steps per epoch, capped by max_steps)
    validation: tuple | None
    metrics_log: JsonlLog
    writer: object | None
    progress: object
    last_path: Path | None
    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_metrics: dict | None = None
    best_score: float = float("-inf")

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def checkpoints_dir(self) -> Path:
        return self.output_dir / "checkpoints"


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train as `config` says; with `resume`, continue exactly from the latest checkpoint in output_dir."""
    run = set_up(config, resume)
    started = time.time()
    while run.epoch < config.epochs and run.step < run.total_steps:
        train_one_epoch(run)
    return finish(run, time.time() - started)


def set_up(config: TrainConfig, resume: bool) -> TrainingRun:
    """Device, data, model, optimiser and logs; the state of the latest checkpoint when resuming."""
    from gadms_model.data.loading import BlockShuffleSampler, TrainDataset
    from gadms_model.data.transforms import eval_transform, train_transform
    from gadms_model.model import ModelConfig, build_model
    from gadms_model.score_store import ScoreStore, load_token_scores

    probe_device = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    process = init_process(probe_device)
    device = select_device(config, process)
    use_bf16 = device.type == "cuda" and config.precision != "fp32"
    if config.precision == "bf16" and device.type != "cuda":
        raise GadmsError("precision: 'bf16' needs a GPU (CPU training runs in fp32)")

    output_dir = Path(config.output_dir)
    checkpoints_dir = output_dir / "checkpoints"
    config_path = output_dir / "config.yaml"
    latest = ckpt.step_checkpoints(checkpoints_dir)[-1] if resume and ckpt.step_checkpoints(checkpoints_dir) else None
    if resume and latest is None:
        raise GadmsError(f"{checkpoints_dir}: nothing to resume from (no step-*.pt checkpoint)")
    if resume and config_path.exists():
        _check_resumable(config_path, config)
    if not resume and ckpt.step_checkpoints(checkpoints_dir):
        raise GadmsError(f"{output_dir}: holds checkpoints of an earlier run (use --resume, or a new output_dir)")
    # The data is checked before anything is written, so a bad data path leaves output_dir as it was.
    source = build_source(config)
    if hasattr(source, "cached_row_groups"):
        source.cached_row_groups = config.shuffle_window  # a shuffle window's row groups stay decoded
    if process.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, config_path)
    barrier()

    model_fields = config.model.model_dump()
    if config.model.mode == "irra":
        model_fields["num_classes"] = source.num_classes  # the fine-tuning recipe's ID loss over train identities
    initial = ckpt.load(config.init_from) if config.init_from and latest is None else None
    if initial is not None:
        model_fields["quick_gelu"] = _initial_activation(model_fields.get("quick_gelu"), initial, config.init_from)
    torch.manual_seed(config.seed)  # same initial weights on every rank
    random.seed(config.seed)
    model = build_model(ModelConfig.model_validate(model_fields))
    model_config = model.config  # its activation resolved: the checkpoints record the choice
    if initial is None and latest is None and config.model.pretrained is None and process.is_main:
        print("warning: neither model.pretrained nor init_from is set, so the CLIP towers start from random weights "
              "(the paper starts from CLIP ViT-B/16)", file=sys.stderr)
    if initial is not None:
        _load_initial_weights(model, initial["model"])
        del initial
    model.to(device)

    transform = train_transform if config.augment else eval_transform
    dataset = TrainDataset(source, transform(tuple(model_config.image_size)), seed=config.seed)
    sampler = BlockShuffleSampler(source.blocks(), config.seed, process.world_size, process.rank, config.shuffle_window)
    steps_per_epoch = len(sampler) // config.batch_size // config.grad_accum_steps
    if steps_per_epoch < 1:
        raise GadmsError(
            f"data: {source.num_pairs} pairs give no optimiser step at batch_size {config.batch_size} × "
            f"grad_accum_steps {config.grad_accum_steps} × {process.world_size} process(es)"
        )
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.optim.warmup_epochs * steps_per_epoch)

    score_store = ScoreStore(source.num_pairs, model_config.context_length)
    if config.token_scores:
        load_token_scores(config.token_scores, score_store)
    # fused: one kernel per step instead of a Python loop over the parameters; for the demo's tiny model on a CPU
    # (6.8M parameters, most of them the token embedding and the MLM head) 24 ms a step instead of 184 ms.
    optimizer = torch.optim.Adam(
        parameter_groups(model, config.optim), lr=config.optim.lr, betas=config.optim.betas, eps=config.optim.eps,
        fused=device.type in FUSED_ADAM_DEVICES,
    )
    schedule_steps = config.optim.schedule_steps or total_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps, schedule_steps, config.optim.warmup_start_factor)
    )
    train_model = model
    if distributed():
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    metrics_log = JsonlLog(output_dir / "metrics.jsonl", process.is_main)
    run = TrainingRun(
        config=config, process=process, device=device,
        autocast=torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else nullcontext(),
        model=model, train_model=train_model, model_config=model_config, dataset=dataset, sampler=sampler,
        score_store=score_store, optimizer=optimizer, scheduler=scheduler, steps_per_epoch=steps_per_epoch,
        total_steps=min(total_steps, config.max_steps) if config.max_steps is not None else total_steps,
        validation=validation_split(config), metrics_log=metrics_log, writer=None, progress=None, last_path=latest,
    )
    if latest is not None:
        _restore(run, ckpt.load(latest))
        metrics_log.truncate_after(run.step)
    if process.is_main:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(output_dir / "tensorboard"), purge_step=run.step if latest is not None else None)

    from tqdm import tqdm

    run.progress = tqdm(total=run.total_steps, initial=run.step, desc="train", unit="step",
                        disable=not (config.progress and process.is_main), dynamic_ncols=True)
    return run


def _restore(run: TrainingRun, state: dict) -> None:
    """Model, optimiser, scheduler, score store, counters and this rank's RNG states from a training checkpoint."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.score_store.load_state_dict(state["score_store"])
    run.step, run.epoch, run.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
    run.best_metrics = state.get("best_metrics") or None
    run.best_score = state.get("best_score", float("-inf"))
    rng = state["rng"]
    ckpt.set_rng_state(rng[run.process.rank] if len(rng) == run.process.world_size else rng[0])


def train_one_epoch(run: TrainingRun) -> None:
    """The rest of the current epoch (all of it, unless resuming inside it, or until max_steps); then validation
    at the epoch's end and at the last step; checkpoints at the epoch's end, every checkpoint_every_steps and at the last step."""
    from gadms_model.data.loading import collate_pairs

    config = run.config
    run.sampler.set_epoch(run.epoch, start=run.step_in_epoch * config.grad_accum_steps * config.batch_size)
    run.dataset.set_epoch(run.epoch)
    loader = DataLoader(run.dataset, batch_size=config.batch_size, sampler=run.sampler,
                        num_workers=config.num_workers, collate_fn=collate_pairs, drop_last=True,
                        pin_memory=run.device.type == "cuda", persistent_workers=False)
    batches = iter(loader)
    run.train_model.train()
    while run.step_in_epoch < run.steps_per_epoch and run.step < run.total_steps:
        _optimizer_step(run, batches)
        end_of_epoch = run.step_in_epoch == run.steps_per_epoch
        if end_of_epoch:
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
            every = config.validation.every_epochs if config.validation else 1
            if run.validation is not None and (run.epoch % every == 0 or run.epoch == config.epochs
                                               or run.step == run.total_steps):
                _validate(run)
        elif run.step == run.total_steps and run.validation is not None:
            _validate(run)  # a step budget ending inside an epoch: the model it ends with is a candidate too
        if end_of_epoch or (config.checkpoint_every_steps and run.step % config.checkpoint_every_steps == 0) \
                or run.step == run.total_steps:
            run.last_path = save_training_checkpoint(run)
        if end_of_epoch:
            break
    del batches, loader


def _optimizer_step(run: TrainingRun, batches) -> None:
    """One optimiser step over grad_accum_steps micro-batches, logged."""
    config, device, model = run.config, run.device, run.model
    run.optimizer.zero_grad(set_to_none=True)
    sums: dict[str, list[float]] = {}
    for micro in range(config.grad_accum_steps):
        batch = next(batches)
        micro_step = run.step * config.grad_accum_steps + micro
        generator = torch.Generator(device=device).manual_seed(
            (config.seed * 1_000_003 + run.process.rank * 1_009 + micro_step * 7_919) % (2**63)
        )
        text_ids = model.tokenizer(batch["caption"]).to(device, non_blocking=True)
        last_micro = micro == config.grad_accum_steps - 1
        sync = run.train_model.no_sync() if distributed() and not last_micro else nullcontext()
        with sync:
            with run.autocast:
                outputs = run.train_model(
                    batch["image"].to(device, non_blocking=True),
                    text_ids,
                    batch["pid"].to(device),
                    caption_ids=batch["caption_id"].to(device),
                    score_store=run.score_store,
                    generator=generator,
                )
            (outputs["loss"] / config.grad_accum_steps).backward()
        for key, value in _scalars(outputs).items():
            sums.setdefault(key, []).append(value)
    if config.optim.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    run.step += 1
    run.step_in_epoch += 1
    scalars = mean_across_ranks(sums, device)
    log_scalars = {key: value for key, value in scalars.items() if math.isfinite(value)}
    if not math.isfinite(scalars["loss"]):
        raise GadmsError(f"step {run.step}: non-finite loss {scalars['loss']} (lower optim.lr?)")
    run.metrics_log.write({"kind": "train", "step": run.step, "epoch": run.epoch, "lr": lr, **log_scalars})
    if run.writer is not None and (run.step % config.log_every_steps == 0 or run.step == 1):
        for key, value in log_scalars.items():
            run.writer.add_scalar(f"train/{key}", value, run.step)
        run.writer.add_scalar("train/lr", lr, run.step)
    run.progress.set_postfix(loss=f"{scalars['loss']:.4f}", epoch=run.epoch)
    run.progress.update(1)


def save_training_checkpoint(run: TrainingRun) -> Path:
    """The full training state at this optimiser step; keeps the last keep_checkpoints of them."""
    rng_states = gather_objects(ckpt.rng_state())
    # Every rank's store must hold the same scores (they are all-gathered each step): record each rank's digest.
    store_digests = gather_objects(hashlib.sha256(run.score_store.scores.cpu().numpy().tobytes()).hexdigest())
    path = ckpt.step_path(run.checkpoints_dir, run.step)
    if run.process.is_main:
        ckpt.save(
            {
                "model_config": run.model_config.model_dump(mode="json"),
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "score_store": run.score_store.state_dict(),
                "step": run.step,
                "epoch": run.epoch,
                "step_in_epoch": run.step_in_epoch,
                "rng": rng_states,
                "score_store_sha256": store_digests,
                "best_metrics": run.best_metrics or {},
                "best_score": run.best_score,
                "train_config": run.config.model_dump(mode="json"),
            },
            path,
        )
        for old in ckpt.step_checkpoints(run.checkpoints_dir)[: -run.config.keep_checkpoints]:
            old.unlink()
    barrier()
    return path


def finish(run: TrainingRun, seconds: float) -> TrainResult:
    """final.pt, and the checkpoint the run chose: best.pt when a validation split selected one."""
    run.progress.close()
    final_path = run.output_dir / "final.pt"
    if run.process.is_main:
        ckpt.save({"model_config": run.model_config.model_dump(mode="json"), "model": run.model.state_dict(),
                   "step": run.step}, final_path)
        if run.writer is not None:
            run.writer.close()
    barrier()
    best_path = run.output_dir / "best.pt"
    chosen = best_path if run.validation is not None and best_path.exists() else final_path
    if run.process.is_main and run.config.progress:
        print(f"trained {run.step} steps in {seconds:.0f} s; model: {chosen}")
    return TrainResult(str(chosen), str(run.output_dir / "metrics.jsonl"), run.best_metrics, str(run.last_path),
                       run.step)


def _validate(run: TrainingRun) -> None:
    """Evaluate on the val split (rank 0); keep best.pt by the configured metric. Other ranks wait."""
    from gadms_model.evaluation.runner import evaluate_split

    config, (name, split) = run.config, run.validation
    metric = config.validation.metric if config.validation else "R1"
    if run.process.is_main:
        with torch.random.fork_rng(devices=[]):  # evaluating draws a DataLoader seed; training must not see it
            metrics = evaluate_split(run.model, split, run.device, batch_size=config.batch_size,
                                     progress=config.progress)
        run.metrics_log.write({"kind": "val", "step": run.step, "epoch": run.epoch, "dataset": name, **metrics})
        if run.writer is not None:
            for key, value in metrics.items():
                run.writer.add_scalar(f"val/{key}", value, run.step)
        if metrics[metric] > run.best_score:
            run.best_metrics, run.best_score = {**metrics, "step": run.step, "epoch": run.epoch}, metrics[metric]
            ckpt.save({"model_config": run.model_config.model_dump(mode="json"), "model": run.model.state_dict(),
                       "step": run.step, "metrics": metrics}, run.output_dir / "best.pt")
        run.model.train()
    run.best_metrics, run.best_score = gather_objects((run.best_metrics, run.best_score))[0]


def _initial_activation(configured: bool | None, initial: dict, path: str) -> bool | None:
    """The activation the init_from weights were trained with (recorded in the checkpoint) unless set otherwise."""
    recorded = initial["model_config"].get("quick_gelu")
    if configured is not None and recorded is not None and configured != recorded:
        raise GadmsError(f"model.quick_gelu {str(configured).lower()} contradicts init_from {path} "
                         f"(trained with quick_gelu {str(recorded).lower()})")
    return recorded if configured is None else configured


def _load_initial_weights(model: torch.nn.Module, state: dict) -> None:
    """Model weights of a (pre-training) checkpoint; parameters whose shape differs (the ID classifier of a
    different number of identities) keep their fresh initialisation."""
    own = model.state_dict()
    compatible = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(compatible, strict=False)
