"""Test-session environment: offline, and every tool's home in a temporary folder.

Set at import time, before any test module imports prefect or ultralytics (both read these on import).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_SESSION_HOME = Path(tempfile.mkdtemp(prefix="gadms-tests-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "YOLO_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "PREFECT_HOME": str(_SESSION_HOME / "prefect"),
        "YOLO_CONFIG_DIR": str(_SESSION_HOME / "ultralytics"),
        "MPLCONFIGDIR": str(_SESSION_HOME / "matplotlib"),
        "TORCH_HOME": str(_SESSION_HOME / "torch"),
        "HF_HOME": str(_SESSION_HOME / "hf"),
        # Two shared cores in CI: Prefect's temporary API server may need more than its default 20 s to start.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # Prefect logs "Stopping temporary server" at exit, after pytest closed the captured streams.
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
)


def _provide_ultralytics_font() -> None:
    """Ultralytics downloads Arial.ttf for its plots on first use; give it matplotlib's DejaVu Sans instead."""
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    target = Path(os.environ["YOLO_CONFIG_DIR"])
    target.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copyfile(font, target / name)


_provide_ultralytics_font()

from storage.compat import ensure_torchvision_ops  # noqa: E402

ensure_torchvision_ops()


@pytest.fixture(scope="session")
def search_benchmark(tmp_path_factory) -> Path:
    """An RSTPReid-format tree of 4 synthetic identities × 3 train images with clean captions."""
    from curation.synthweb.benchmark import write_synthetic_benchmark

    return write_synthetic_benchmark(tmp_path_factory.mktemp("search"), 4, 0, 0, 3, seed=0, train_captions="clean")


@pytest.fixture(scope="session")
def tiny_search_model(search_benchmark) -> str:
    """A tiny GA-DMS trained on `search_benchmark` until its clean captions find their identities (~30 s).

    100 epochs, not fewer: at 30 or 60 the 4 identities' captions found their own images 2 to 4 times depending
    on rounding alone (loop or fused Adam), so a test's 3-of-4 bar would have judged the optimiser's rounding."""
    from gadms_model.model import ModelConfig
    from gadms_model.training import TrainConfig, train

    root = search_benchmark.parent
    config = TrainConfig.model_validate({
        "output_dir": str(root / "run"),
        "data": {"kind": "benchmark", "path": str(root), "benchmark": "rstpreid"},
        "model": ModelConfig.tiny(mode="sdm").model_dump(mode="json"),
        "epochs": 100, "batch_size": 6, "num_workers": 0, "seed": 0, "augment": False, "progress": False,
        "optim": {"lr": 2e-3, "eps": 1e-8, "warmup_epochs": 1},
    })
    return train(config).checkpoint_path


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
