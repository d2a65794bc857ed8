"""The demo's GA-DMS training (flows.demo.demo_train_config): deterministic given the same shards, and its
learning rate reaches 0 at the end of the step budget."""
import json
import math
from pathlib import Path

import pytest
import torch

from curation.synthweb.benchmark import write_synthetic_benchmark
from flows.demo import demo_train_config
from gadms_model.training import train
from storage.layout import OutputLayout
from storage.shards import commit_shard
from tests.storage_fixtures import captions_for, crop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_demo_data(tmp_path_factory) -> tuple[Path, Path]:
    """Two shards of 6 and 4 one-colour crops with distinct captions, and a 2 + 2 identity held-out benchmark."""
    root = tmp_path_factory.mktemp("demo-data")
    layout = OutputLayout(str(root / "webperson"))
    colours = ["red", "blue", "green", "black", "white", "grey", "pink", "brown", "purple", "orange"]
    for shard_id, numbers in (("shard-a", range(6)), ("shard-b", range(6, 10))):
        crops = [crop(n) for n in numbers]
        captions = [captions_for(c, f"a person in a {colours[n]} top", f"someone wearing {colours[n]}")
                    for c, n in zip(crops, numbers)]
        commit_shard(layout, shard_id, "run-1", crops, captions, [])
    heldout = root / "heldout"
    write_synthetic_benchmark(heldout, train_identities=0, val_identities=2, test_identities=2,
                              images_per_identity=2, seed=1, train_captions="clean", size=(64, 128),
                              first_identity=1_000_000)
    return root / "webperson", heldout


def _train(data: tuple[Path, Path], out: Path, seed: int, steps: int = 6, num_workers: int = 0):
    shards, heldout = data
    return train(demo_train_config(shards, heldout, out, steps, seed=seed, batch_size=4, progress=False,
                                   num_workers=num_workers))


def _weights(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_same_shards_and_seed_give_identical_training(tiny_demo_data, tmp_path):
    first = _train(tiny_demo_data, tmp_path / "a", seed=0)
    second = _train(tiny_demo_data, tmp_path / "b", seed=0)
    _train(tiny_demo_data, tmp_path / "c", seed=1)
    # Every logged figure (train losses, lr, val metrics) equal, line for line, and every weight bit for bit.
    lines = Path(first.metrics_path).read_text().splitlines()
    # 20 pairs / batch 4 = 5 steps per epoch: validation at the epoch's end (step 5) and at the budget's (6).
    assert [(r["kind"], r["step"]) for r in map(json.loads, lines)] == [
        ("train", 1), ("train", 2), ("train", 3), ("train", 4), ("train", 5), ("val", 5), ("train", 6), ("val", 6)]
    assert lines == Path(second.metrics_path).read_text().splitlines()
    for name in ("final.pt", "best.pt"):
        a, b = _weights(str(tmp_path / "a" / name)), _weights(str(tmp_path / "b" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    # The seed does change them: the check above could fail.
    a, c = _weights(str(tmp_path / "a" / "final.pt")), _weights(str(tmp_path / "c" / "final.pt"))
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_data_loader_workers_do_not_change_the_training(tiny_demo_data, tmp_path):
    # Decoded in one worker process or in the training process itself (the demo's 0 workers), every figure and
    # weight is the same, since augmentation is seeded per pair and epoch.
    in_worker = _train(tiny_demo_data, tmp_path / "worker", seed=0, num_workers=1)
    in_process = _train(tiny_demo_data, tmp_path / "process", seed=0, num_workers=0)
    assert Path(in_worker.metrics_path).read_text() == Path(in_process.metrics_path).read_text()
    a, b = _weights(str(tmp_path / "worker" / "final.pt")), _weights(str(tmp_path / "process" / "final.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_learning_rate_decays_to_zero_over_the_step_budget(tiny_demo_data, tmp_path):
    result = _train(tiny_demo_data, tmp_path / "run", seed=0, steps=6)
    lrs = [r["lr"] for r in map(json.loads, Path(result.metrics_path).read_text().splitlines()) if r["kind"] == "train"]
    # warmup_epochs 0.5 of 5 steps → round(2.5) = 2 warm-up steps from 0.1 × lr; then cosine over the 4 left.
    peak = 5e-4
    expected = [peak * 0.1, peak * 0.55] + [peak * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-12)  # float arithmetic of the same formula, in another order


def test_demo_site_port_makes_the_shard_ids_of_two_runs_equal(tmp_path):
    # The shard ids (and so the order training reads the shards in) digest the URL list's rows, which hold the
    # site server's port: two runs on the demo's port plan the same shards; a run on another port plans others.
    from curation.chunks import ListSource, plan_chunks
    from curation.synthweb import render_site, write_url_list
    from flows.demo import DEMO_SITE_PORT, demo_site_server

    site = render_site(tmp_path / "site", images=40, seed=0)
    ids = {}
    for run in ("a", "b"):
        with demo_site_server(site.root) as server:
            urls = tmp_path / run / "urls.parquet"
            write_url_list(site.root, server.base_url, urls)
            assert server.base_url == f"http://127.0.0.1:{DEMO_SITE_PORT}"
        ids[run] = [chunk.shard_id for chunk in plan_chunks([ListSource(str(urls))], 20)]
    write_url_list(site.root, f"http://127.0.0.1:{DEMO_SITE_PORT + 1}", tmp_path / "c" / "urls.parquet")
    other = [chunk.shard_id for chunk in plan_chunks([ListSource(str(tmp_path / "c" / "urls.parquet"))], 20)]
    assert len(ids["a"]) == 4 and ids["a"] == ids["b"]  # the 40-scene web lists 61 image URLs
    assert not set(other) & set(ids["a"])


def test_demo_site_server_falls_back_to_a_free_port(tmp_path):
    from curation.synthweb import render_site
    from flows.demo import DEMO_SITE_PORT, demo_site_server

    site = render_site(tmp_path / "site", images=4, seed=0)
    with demo_site_server(site.root) as first, demo_site_server(site.root) as second:
        assert first.base_url == f"http://127.0.0.1:{DEMO_SITE_PORT}"
        assert second.base_url.startswith("http://127.0.0.1:") and second.base_url != first.base_url
