"""Test-session environment: offline, and every tool's home in a temporary folder.

Set at import time, before any test module imports prefect or ultralytics (both read these on import).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

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

from gadms_model.compat import ensure_torchvision_ops  # noqa: E402

ensure_torchvision_ops()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)
