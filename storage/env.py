"""Offline defaults: nothing this project runs may reach a model hub or phone home unless the user says so."""
from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "YOLO_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}


def apply_offline_defaults() -> None:
    """Set each default unless the user already set the variable (an online user can export HF_HUB_OFFLINE=0)."""
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
