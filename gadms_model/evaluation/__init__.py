"""Evaluation: the standard ranking metrics and the benchmark evaluation runner."""
from gadms_model.evaluation.metrics import METRIC_KEYS, blocked_rank_metrics, rank_metrics

__all__ = ["METRIC_KEYS", "blocked_rank_metrics", "rank_metrics"]
