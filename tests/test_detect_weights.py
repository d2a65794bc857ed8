"""Detector weights are untrusted: a crafted checkpoint is refused before ultralytics unpickles it."""
from __future__ import annotations

import pytest
import torch
from ultralytics import YOLO

from curation.detect.weights import check_yolo_weights
from curation.synthweb.detector import DEMO_WEIGHTS
from flows.cli import main
from storage.errors import GadmsError


class _Payload:
    """Unpickling this creates `marker`: what a crafted checkpoint's code would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "epoch": 3}, path)
    return path, marker


def test_the_payload_is_real(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what ultralytics does: the control for the tests below
    assert marker.exists()


def test_detect_refuses_a_crafted_checkpoint_without_running_it(evil, tmp_path, capsys):
    path, marker = evil
    import pyarrow.parquet as pq

    from storage.schema import DOWNLOAD_SCHEMA

    downloads = tmp_path / "downloads.parquet"
    pq.write_table(DOWNLOAD_SCHEMA.empty_table(), downloads)  # a valid input: only the weights are wrong
    out = tmp_path / "out"
    assert main(["detect", "--downloads", str(downloads), "--out", str(out), "--weights", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gadms detect: error: weights {str(path)!r}: refused: the checkpoint asks for "
                   "exec, which is not a torch or ultralytics network class (loading it could run code)")
    assert not marker.exists()
    assert "weights_only=False" not in err


def test_train_detector_refuses_a_crafted_model_before_rendering(evil, tmp_path, capsys):
    path, marker = evil
    out = tmp_path / "train"
    assert main(["synthweb", "train-detector", "--out", str(out), "--model", str(path), "--train-images", "2",
                 "--val-images", "1", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gadms synthweb: error: model ") and "refused: the checkpoint asks for exec," in err
    assert not marker.exists()
    assert not (out / "dataset").exists()


def test_ultralytics_checkpoints_pass(tmp_path):
    check_yolo_weights(str(DEMO_WEIGHTS), "weights")  # a training run's best.pt, with its train args
    saved = tmp_path / "saved.pt"
    YOLO("yolo11n-pose.yaml").save(str(saved))
    check_yolo_weights(str(saved), "weights")
    check_yolo_weights("yolo11n-pose.yaml", "weights")  # a config builds a new model: nothing to unpickle


def test_files_that_are_no_checkpoint_are_named(tmp_path):
    jpeg = tmp_path / "photo.pt"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    with pytest.raises(GadmsError, match=r"^weights '.*photo.pt': (refused: not a weights-only|not a PyTorch)"):
        check_yolo_weights(str(jpeg), "weights")
    pickled = tmp_path / "list.pt"
    torch.save([1, 2], pickled, _use_new_zipfile_serialization=False)
    pickled.write_bytes(pickled.read_bytes()[:40])  # a legacy pickle cut short
    with pytest.raises(GadmsError) as caught:
        check_yolo_weights(str(pickled), "weights")
    assert "weights_only=False" not in str(caught.value) and "\n" not in str(caught.value)


def test_concurrent_checks_all_pass():
    # The build flow's chunk threads create detectors at the same time; torch's safe-globals list is global.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: check_yolo_weights(str(DEMO_WEIGHTS), "weights"), range(16)))
    assert results == [None] * 16
