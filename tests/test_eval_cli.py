"""`gadms eval` and `evaluate()` on a checkpoint: the standard protocol's numbers, the paper's table layout."""
import json

import pytest
import torch

from flows.cli import main
from gadms_model.data import load_benchmark
from curation.synthweb.benchmark import write_synthetic_benchmark
from gadms_model.data.transforms import eval_transform
from gadms_model.evaluation import evaluate, format_table, rank_metrics
from gadms_model.model import ModelConfig
from gadms_model.training import TrainConfig, train
from gadms_model.checkpoint import load_model
from PIL import Image


@pytest.fixture(scope="module")
def checkpoint_and_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_synthetic_benchmark(root, 4, 3, 4, 2, seed=2, train_captions="clean")
    config = TrainConfig.model_validate({
        "output_dir": str(root / "run"),
        "data": {"kind": "benchmark", "path": str(root), "benchmark": "rstpreid"},
        "model": ModelConfig.tiny(mode="irra").model_dump(mode="json"),
        "epochs": 1, "batch_size": 4, "num_workers": 0, "progress": False,
    })
    return train(config).checkpoint_path, root


@pytest.mark.slow  # trains the module's tiny model
def test_eval_matches_the_protocol_on_the_test_split(checkpoint_and_root):
    checkpoint, root = checkpoint_and_root
    # Reference: full similarity matrix from the model's own encoders, ranked by rank_metrics.
    model = load_model(checkpoint)
    test = load_benchmark("rstpreid", root).test
    transform = eval_transform((64, 32))
    with torch.no_grad():
        images = torch.stack([transform(Image.open(p).convert("RGB")) for p in test.image_paths])
        similarity = model.encode_text(model.tokenizer(test.captions)) @ model.encode_image(images).T
    expected = rank_metrics(similarity, test.caption_pids, test.image_pids)

    assert evaluate(checkpoint, "rstpreid", str(root), device="cpu", progress=False) == pytest.approx(expected, abs=1e-6)
    # The val split is another set of identities: other numbers, same protocol.
    assert evaluate(checkpoint, "rstpreid", str(root), split="val", device="cpu", progress=False) != expected


def test_eval_cli_json_and_table(checkpoint_and_root, capsys):
    checkpoint, root = checkpoint_and_root
    expected = evaluate(checkpoint, "rstpreid", str(root), device="cpu", progress=False)
    assert main(["eval", "--checkpoint", checkpoint, "--dataset", "rstpreid", "--root", str(root), "--json",
                 "--device", "cpu", "--num-workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rstpreid": pytest.approx(expected)}
    assert main(["eval", "--checkpoint", checkpoint, "--dataset", "rstpreid", "--root", str(root), "--name", "tiny",
                 "--device", "cpu", "--num-workers", "0"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| Method | RSTPReid R@1 | RSTPReid R@5 | RSTPReid R@10 | RSTPReid mAP | RSTPReid mINP |"
    assert table[2] == "| tiny | " + " | ".join(f"{expected[k]:.2f}" for k in ("R1", "R5", "R10", "mAP", "mINP")) + " |"


def test_format_table_orders_datasets_as_the_paper():
    metrics = {"R1": 1.0, "R5": 2.0, "R10": 3.0, "mAP": 4.0, "mINP": 5.0}
    table = format_table({"GA-DMS": {"rstpreid": metrics, "cuhk-pedes": metrics}, "IRRA": {"cuhk-pedes": metrics}})
    lines = table.splitlines()
    assert lines[0].startswith("| Method | CUHK-PEDES R@1 |") and "| RSTPReid R@1 |" in lines[0]
    assert lines[3] == "| IRRA | 1.00 | 2.00 | 3.00 | 4.00 | 5.00 | – | – | – | – | – |"


def test_eval_errors_are_one_line(checkpoint_and_root, tmp_path, capsys):
    checkpoint, root = checkpoint_and_root
    assert main(["eval", "--checkpoint", checkpoint, "--dataset", "icfg-pedes", "--root", str(root)]) == 2
    assert "ICFG-PEDES/ICFG-PEDES.json: annotation file not found" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert main(["eval", "--checkpoint", str(foreign), "--dataset", "rstpreid", "--root", str(root)]) == 2
    err = capsys.readouterr().err
    assert "foreign.pt: not a gadms checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--checkpoint", checkpoint, "--dataset", "rstpreid", "--root", str(root), "--split", "val",
                 "--dataset", "cuhk-pedes"]) == 2
    assert "give one --root per --dataset" in capsys.readouterr().err
