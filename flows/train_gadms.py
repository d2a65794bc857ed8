"""train-gadms: pre-train (or fine-tune) GA-DMS, then evaluate the selected checkpoint.

Deployed with a trigger on `prefect.flow-run.Completed` of build-webperson (prefect.yaml): the event's flow
run id comes in as `build_flow_run`, and training reads that run's output root from its parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import png_data_url
from flows.config import resolve_build_config
from flows.evaluate_gadms import BenchmarkRef, evaluate_task, publish_metrics
from gadms_model.training import TrainConfig, train
from storage.configfile import ConfigError, load_config, validate_config
from storage.reports import loss_curves_png

DEFAULT_CONFIG = "gadms_model/training/configs/pretrain-webperson.yaml"


def build_output_root(build_flow_run: str) -> str:
    """The output root of a build-webperson flow run, given its id (or the event resource id prefect.flow-run.<id>)."""
    from prefect.client.orchestration import get_client

    run_id = build_flow_run.removeprefix("prefect.flow-run.")
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    config = flow_run.parameters.get("config")
    if config is None:
        raise ConfigError(f"flow run {run_id}: no 'config' parameter to find its output root in")
    return resolve_build_config(config).output_root


@task(name="train", cache_policy=NO_CACHE)
def train_task(config: TrainConfig, resume: bool):
    return train(config, resume=resume)


@flow(name="train-gadms", log_prints=True)
def train_gadms(
    config: str | dict = DEFAULT_CONFIG,
    build_flow_run: str | None = None,
    evaluate_on: list[BenchmarkRef] | None = None,
    resume: bool = False,
) -> dict:
    """Train from a training config (YAML path or fields); with `build_flow_run`, train on that build's shards."""
    logger = get_run_logger()
    overrides = {}
    if build_flow_run:
        root = build_output_root(build_flow_run)
        overrides["data"] = {"kind": "webperson", "path": root}
        logger.info("training on the output root of build run %s: %s", build_flow_run, root)
    if isinstance(config, dict):
        train_config = validate_config({**config, **overrides}, TrainConfig, "train-gadms parameters")
    else:
        train_config = load_config(config, TrainConfig, overrides)
    result = train_task(train_config, resume)
    curves = loss_curves_png(result.metrics_path, Path(train_config.output_dir) / "loss_curves.png")
    create_image_artifact(png_data_url(curves), key="gadms-loss-curves", description="training losses per step")
    metrics = {b.dataset: evaluate_task(result.checkpoint_path, b) for b in (evaluate_on or [])}
    summary = {"checkpoint": result.checkpoint_path, "steps": result.steps, "validation": result.best_metrics,
               "test": metrics}
    if metrics:
        logger.info("\n%s", publish_metrics("GA-DMS", metrics, "gadms-train-metrics"))
    Path(train_config.output_dir, "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
