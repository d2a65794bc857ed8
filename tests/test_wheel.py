"""The built wheel carries its data: the prompts and template bank, found from any folder once installed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_installed_wheel_validates_its_template_bank_from_another_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("gadms-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path, before this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(site)}
    located = subprocess.run([sys.executable, "-c", "import flows.cli, prompts; print(prompts.__file__)"],
                             cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(located).parent == site / "prompts"
    result = subprocess.run([sys.executable, "-m", "flows.cli", "templates", "validate"], cwd=elsewhere, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    bank = [line for line in (REPO / "prompts" / "templates.jsonl").read_text().splitlines() if line.strip()]
    assert result.stdout.strip() == f"{site / 'prompts' / 'templates.jsonl'}: {len(bank)} templates, 0 problem(s)"
