"""The train-gadms and evaluate-gadms flows on a tiny model and a synthetic RSTPReid-format benchmark."""
import json

import pytest

from flows.evaluate_gadms import evaluate_gadms
from flows.train_gadms import train_gadms
from curation.synthweb.benchmark import write_synthetic_benchmark
from gadms_model.evaluation import evaluate
from gadms_model.model import ModelConfig

pytestmark = pytest.mark.slow


def test_train_then_evaluate_flows(tmp_path):
    write_synthetic_benchmark(tmp_path / "bench", 4, 2, 3, 2, seed=0, train_captions="clean")
    config = {
        "output_dir": str(tmp_path / "run"),
        "data": {"kind": "benchmark", "path": str(tmp_path / "bench"), "benchmark": "rstpreid"},
        "model": ModelConfig.tiny(mode="gadms").model_dump(mode="json"),
        "epochs": 1, "max_steps": 2, "batch_size": 4, "num_workers": 0, "progress": False,
    }
    benchmark = {"dataset": "rstpreid", "root": str(tmp_path / "bench")}
    summary = train_gadms(config, evaluate_on=[benchmark])
    assert summary["steps"] == 2
    assert summary["checkpoint"].endswith("best.pt")  # the benchmark's val split selected it
    expected = evaluate(summary["checkpoint"], "rstpreid", str(tmp_path / "bench"), progress=False)
    assert summary["test"] == {"rstpreid": expected}
    assert sorted(expected) == ["R1", "R10", "R5", "mAP", "mINP"]
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2

    metrics = evaluate_gadms({"checkpoint": summary["checkpoint"], "benchmarks": [benchmark]})
    assert metrics == {"rstpreid": expected}
