"""The trainer: exact resume, checkpoints that load with weights_only, config validation, 2-process DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from curation.synthweb.benchmark import write_synthetic_benchmark
from gadms_model.model import ModelConfig
from gadms_model.training import TrainConfig, train
from storage.configfile import ConfigError, load_config, validate_config
from storage.errors import GadmsError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_benchmark(root, train_identities=6, val_identities=3, test_identities=3, images_per_identity=3, seed=1)
    return root


def config_for(root: Path, output_dir: Path, **overrides) -> TrainConfig:
    values = dict(
        output_dir=str(output_dir),
        data={"kind": "benchmark", "path": str(root), "benchmark": "rstpreid"},
        model=ModelConfig.tiny(mode="gadms").model_dump(mode="json"),
        epochs=2,
        batch_size=4,
        num_workers=0,
        seed=3,
        optim={"lr": 5e-4, "warmup_epochs": 1},
        keep_checkpoints=10,
        progress=False,
    )
    values.update(overrides)
    return TrainConfig.model_validate(values)


def losses(metrics_path) -> list[tuple[int, float, float]]:
    lines = [json.loads(line) for line in Path(metrics_path).read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in lines if r["kind"] == "train"]


@pytest.mark.slow
def test_resume_repeats_the_uninterrupted_loss_sequence(synthetic_root, tmp_path):
    uninterrupted = train(config_for(synthetic_root, tmp_path / "a"))
    expected = losses(uninterrupted.metrics_path)
    assert [step for step, _, _ in expected] == list(range(1, uninterrupted.steps + 1))
    assert uninterrupted.steps == 8  # 17 captions → 4 steps of 4 per epoch, 2 epochs

    # Interrupted after step 3 (mid-epoch), then resumed from its checkpoint.
    interrupted = train(config_for(synthetic_root, tmp_path / "b", max_steps=3))
    assert interrupted.steps == 3 and Path(interrupted.last_checkpoint_path).name == "step-00000003.pt"
    resumed = train(config_for(synthetic_root, tmp_path / "b"), resume=True)
    assert resumed.steps == 8
    assert losses(resumed.metrics_path) == expected  # bit-identical, lr schedule included

    state = torch.load(resumed.last_checkpoint_path, weights_only=True)
    assert state["step"] == 8 and state["epoch"] == 2 and state["step_in_epoch"] == 0
    assert {"model", "optimizer", "scheduler", "score_store", "rng", "model_config"} <= set(state)
    assert (state["score_store"]["scores"] != torch.tensor(0.85, dtype=torch.float16)).any()
    assert list((tmp_path / "b" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "b" / "config.yaml").exists()
    # Model selection used the val split: best.pt carries its validation metrics.
    best = torch.load(resumed.checkpoint_path, weights_only=True)
    assert Path(resumed.checkpoint_path).name == "best.pt"
    assert best["metrics"] == {k: v for k, v in resumed.best_metrics.items() if k not in ("step", "epoch")}


def test_config_rejects_unknown_keys_and_is_saved_beside_outputs(synthetic_root, tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "data": {"kind": "benchmark", "path": str(synthetic_root), "benchmark": "rstpreid"}, "learning_rate": 1e-4}))
    with pytest.raises(ConfigError, match=r"train.yaml: field 'learning_rate': Extra inputs are not permitted"):
        load_config(path, TrainConfig)
    path.write_text(yaml.safe_dump({"output_dir": "x", "data": {"kind": "benchmark", "path": "y"}}))
    with pytest.raises(ConfigError, match=r"field 'data': Value error, 'benchmark' is required with kind 'benchmark'"):
        load_config(path, TrainConfig)


def test_resume_refuses_a_changed_config_and_a_fresh_start_refuses_old_checkpoints(synthetic_root, tmp_path):
    train(config_for(synthetic_root, tmp_path / "run", max_steps=1, epochs=1))
    with pytest.raises(Exception, match=r"holds checkpoints of an earlier run"):
        train(config_for(synthetic_root, tmp_path / "run", epochs=1))
    with pytest.raises(Exception, match=r"config.yaml: cannot resume with a different seed"):
        train(config_for(synthetic_root, tmp_path / "run", epochs=1, seed=4), resume=True)
    with pytest.raises(Exception, match=r"nothing to resume from"):
        train(config_for(synthetic_root, tmp_path / "fresh"), resume=True)


@pytest.mark.slow
def test_two_process_gloo_ddp_run_shares_the_score_store(synthetic_root, tmp_path):
    config = config_for(synthetic_root, tmp_path / "ddp", epochs=1, batch_size=2, grad_accum_steps=2,
                        checkpoint_every_steps=1)
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29731",
               "-m", "flows.cli", "train", "--config", str(config_path)]
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-3000:]
    checkpoints = sorted((tmp_path / "ddp" / "checkpoints").glob("step-*.pt"))
    state = torch.load(checkpoints[-1], weights_only=True)
    assert state["step"] == 2  # 17 captions over 2 ranks → 9 each → 4 micro-batches of 2 → 2 accumulated steps
    assert len(state["rng"]) == 2
    first, second = state["score_store_sha256"]
    assert first == second
    scored = (state["score_store"]["scores"] != torch.tensor(0.85, dtype=torch.float16)).any(1)
    assert int(scored.sum()) == 16  # every caption either rank saw (4 micro-batches × 2 ranks × 2) is in both
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2]


def test_fixed_token_scores_from_a_file_drive_a_run_unchanged(synthetic_root, tmp_path):
    scores = torch.zeros(17, 77)
    scores[::2, 1:4] = 1.0  # 17 captions: every other one has its first three words marked informative
    torch.save({"scores": scores}, tmp_path / "scores.pt")
    model = ModelConfig.tiny(mode="gadms", mask_from="fixed").model_dump(mode="json")
    result = train(config_for(synthetic_root, tmp_path / "run", model=model, epochs=1,
                              token_scores=str(tmp_path / "scores.pt")))
    state = torch.load(result.last_checkpoint_path, weights_only=True)
    assert torch.equal(state["score_store"]["scores"].float(), scores)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [1, 2, 3, 4]
    with pytest.raises(GadmsError, match="token_scores .*shape \\(17, 77\\)"):
        torch.save({"scores": torch.zeros(5, 77)}, tmp_path / "short.pt")
        train(config_for(synthetic_root, tmp_path / "bad", model=model, token_scores=str(tmp_path / "short.pt")))


@pytest.mark.parametrize("name", ["pretrain-webperson.yaml", "finetune-cuhk.yaml"])
def test_example_configs_validate(name):
    config = load_config(REPO / "gadms_model" / "training" / "configs" / name, TrainConfig)
    assert isinstance(config.model, ModelConfig) and config.model.clip_model == "ViT-B-16"


def test_model_fields_are_typed_and_checked_with_the_fields_they_depend_on():
    data = {"output_dir": "x", "data": {"kind": "webperson", "path": "y"}}
    with pytest.raises(ConfigError, match=r"^c: field 'model.gass_layers': Input should be greater than or equal to 1"):
        validate_config({**data, "model": {"gass_layers": 0}}, TrainConfig, "c")
    with pytest.raises(ConfigError, match=r"^c: field '<root>': Value error, model.mask_from 'fixed' needs token_scores"):
        validate_config({**data, "model": {"mask_from": "fixed"}}, TrainConfig, "c")
    with pytest.raises(ConfigError, match=r"^c: field '<root>': Value error, model.mask_from 'constant' ignores"):
        validate_config({**data, "model": {"mask_from": "constant"}, "token_scores": "s.pt"}, TrainConfig, "c")
    assert validate_config({**data, "model": {"mask_from": "constant"}}, TrainConfig, "c").model.mask_from == "constant"


def test_init_from_keeps_the_activation_the_weights_were_trained_with(synthetic_root, tmp_path):
    gelu_model = ModelConfig.tiny(mode="gadms", quick_gelu=False).model_dump(mode="json")
    pretrained = train(config_for(synthetic_root, tmp_path / "pre", model=gelu_model, max_steps=1))
    assert torch.load(pretrained.checkpoint_path, weights_only=True)["model_config"]["quick_gelu"] is False

    unset = ModelConfig.tiny(mode="gadms").model_dump(mode="json")  # quick_gelu None: taken from init_from
    tuned = train(config_for(synthetic_root, tmp_path / "tune", model=unset, max_steps=1,
                             init_from=pretrained.checkpoint_path))
    assert torch.load(tuned.checkpoint_path, weights_only=True)["model_config"]["quick_gelu"] is False

    contradicting = dict(unset, quick_gelu=True)
    with pytest.raises(GadmsError, match=r"model\.quick_gelu true contradicts init_from .*\(trained with "
                                         r"quick_gelu false\)"):
        train(config_for(synthetic_root, tmp_path / "bad", model=contradicting, max_steps=1,
                         init_from=pretrained.checkpoint_path))


def test_the_train_command_warns_of_random_weights_and_only_then(synthetic_root, tmp_path, capsys):
    from flows.cli import main

    config = config_for(synthetic_root, tmp_path / "run", epochs=1, max_steps=1)
    (tmp_path / "random.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["train", "--config", str(tmp_path / "random.yaml")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == ["warning: neither model.pretrained nor init_from is set, so the CLIP towers start from random "
                        "weights (the paper starts from CLIP ViT-B/16)"]
    tuned = config_for(synthetic_root, tmp_path / "tuned", epochs=1, max_steps=1,
                       init_from=str(tmp_path / "run" / "final.pt"))
    (tmp_path / "tuned.yaml").write_text(yaml.safe_dump(tuned.model_dump(mode="json")))
    assert main(["train", "--config", str(tmp_path / "tuned.yaml")]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_stops_a_run_with_loader_workers_cleanly(synthetic_root, tmp_path):
    """A terminal's Ctrl-C reaches the loader workers too; the main process, not a dead worker, ends the run."""
    import signal
    import time

    config = config_for(synthetic_root, tmp_path / "run", epochs=1000, num_workers=2, batch_size=2)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    metrics = tmp_path / "run" / "metrics.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", "--config", str(tmp_path / "train.yaml")],
                               cwd=REPO, start_new_session=True, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 20):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()[-3000:]
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err[-3000:]
    assert err.rstrip().endswith("gadms train: interrupted") and "Traceback" not in err, err[-3000:]
