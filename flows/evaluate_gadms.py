"""evaluate-gadms: one checkpoint against one or more benchmarks; a metric table artifact in the paper's layout."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field

from gadms_model.evaluation import evaluate, format_table
from storage.configfile import load_config, validate_config

DEFAULT_CONFIG = "flows/configs/evaluate.yaml"


class BenchmarkRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="cuhk-pedes | icfg-pedes | rstpreid")
    root: str


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(checkpoint: str, benchmark: BenchmarkRef) -> dict:
    return evaluate(checkpoint, benchmark.dataset, benchmark.root, progress=False)


def publish_metrics(title: str, metrics: dict[str, dict], key: str) -> str:
    table = format_table({title: metrics})
    create_markdown_artifact(f"# {title}\n\n{table}\n", key=key, description="text→image retrieval metrics (%)")
    return table


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
