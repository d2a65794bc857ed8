"""Evaluation: the standard ranking metrics and the benchmark evaluation runner."""
from gadms_model.evaluation.metrics import METRIC_KEYS, blocked_rank_metrics, rank_metrics
from gadms_model.evaluation.runner import evaluate, evaluate_model, evaluate_split, format_table

__all__ = ["METRIC_KEYS", "blocked_rank_metrics", "evaluate", "evaluate_model", "evaluate_split", "format_table",
           "rank_metrics"]
