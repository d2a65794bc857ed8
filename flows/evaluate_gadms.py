"""evaluate-gadms: one checkpoint against one or more benchmarks; a metric table artifact in the paper's layout."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field

from flows.train_gadms import BenchmarkRef, evaluate_task, publish_metrics
from storage.configfile import load_config, validate_config

DEFAULT_CONFIG = "flows/configs/evaluate.yaml"


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    name: str = Field(default="GA-DMS", description="row title in the metric table")
    benchmarks: list[BenchmarkRef] = Field(min_length=1)


@flow(name="evaluate-gadms", log_prints=True)
def evaluate_gadms(config: str | dict = DEFAULT_CONFIG) -> dict:
    cfg = (validate_config(config, EvaluateConfig, "evaluate-gadms parameters") if isinstance(config, dict)
           else load_config(Path(config), EvaluateConfig))
    metrics = {b.dataset: evaluate_task(cfg.checkpoint, b) for b in cfg.benchmarks}
    get_run_logger().info("\n%s", publish_metrics(cfg.name, metrics, "gadms-evaluation"))
    return metrics
