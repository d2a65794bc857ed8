"""benchmarks/gadms_effect.py's new logic: simulated-VLM train captions with their hallucination log, oracle token
scores derived from it, the cost-of-noise gap and the share of it an arm closes, and the pooled AUROC."""
import hashlib
import json
import math

import pytest
import torch

from benchmarks.gadms_effect import TrainingData, gap_closed, noise_gap, write_pair_labels
from benchmarks.noisy_captions import pooled_auroc, train_token_labels, write_oracle_scores
from curation.caption.prompts import load_templates
from curation.synthweb.benchmark import write_synthetic_benchmark
from curation.synthweb.vlm import hallucinated_word_flags
from gadms_model.data.sources import webperson_source
from storage.errors import GadmsError
from tests.storage_fixtures import build_root, crop

TEMPLATES = [t.text for t in load_templates("prompts/templates.jsonl")]


def _vlm_benchmark(root, rate):
    return write_synthetic_benchmark(root, 2, 1, 1, 1, seed=0, train_captions="vlm", size=(16, 32),
                                     first_identity=3_000_000, query_captions="per_image", templates=TEMPLATES,
                                     hallucination_rate=rate)


def test_flags_follow_the_log_and_a_log_of_another_caption_is_refused():
    caption = "A woman in a red coat."
    assert hallucinated_word_flags(caption, [{"word": "red", "word_index": 4}]) == [False] * 4 + [True, False]
    assert hallucinated_word_flags(caption, [{"word": "coat", "word_index": 5}]) == [False] * 5 + [True]  # "coat."
    with pytest.raises(GadmsError, match=r"^log\.jsonl: train/1\.jpg: hallucinated word 'blue' at index 4"):
        hallucinated_word_flags(caption, [{"word": "blue", "word_index": 4}], "log.jsonl: train/1.jpg")
    with pytest.raises(GadmsError, match="at index 9"):
        hallucinated_word_flags(caption, [{"word": "red", "word_index": 9}])


def test_oracle_scores_zero_exactly_the_tokens_of_hallucinated_words(tmp_path):
    noisy = _vlm_benchmark(tmp_path / "noisy", 1.0)
    clean = _vlm_benchmark(tmp_path / "clean", 0.0)
    captions = json.loads((noisy / "noise_words.json").read_text())
    first = captions["train/3000000_00.jpg"]
    assert first["caption"] == ("A woman with long blonde hair wears a red coat and yellow trousers and has a "
                                "backpack.")
    log = [json.loads(line) for line in (noisy / "hallucination_log.jsonl").read_text().splitlines()]
    assert [(e["slot"], e["word"], e["truth"], e["word_index"]) for e in log if e["identity"] == 3_000_000] == [
        ("man/woman", "woman", "man", 1), ("colored outerwear", "red", "white coat", 8),
        ("colored bottom", "yellow", "black trousers", 11)]
    assert [i for i, flag in enumerate(first["noise"]) if flag] == [1, 8, 11]
    # Rate 0: the same template and stream, so the caption is the truth of the noisy one at the flagged words.
    truth = json.loads((clean / "noise_words.json").read_text())["train/3000000_00.jpg"]
    assert truth["caption"] == "A man with long blonde hair wears a white coat and black trousers and has a backpack."
    assert [i for i, (a, b) in enumerate(zip(truth["caption"].split(), first["caption"].split())) if a != b] == [1, 8, 11]
    assert (clean / "hallucination_log.jsonl").read_text() == ""

    write_oracle_scores(train_token_labels(noisy.parent, 77), tmp_path / "oracle.pt", 77)
    row = torch.load(tmp_path / "oracle.pt", weights_only=True)["scores"][0]
    # SOT at 0; 17 words in 18 tokens ("backpack." is two); EOT at 19: only positions 2, 9, 12 are hallucinated.
    expected = torch.zeros(77)
    expected[1:19] = 1.0
    expected[[2, 9, 12]] = 0.0
    assert torch.equal(row, expected)


def test_vlm_captions_need_the_template_bank(tmp_path):
    with pytest.raises(GadmsError, match="needs the template bank"):
        write_synthetic_benchmark(tmp_path, 1, 1, 1, 1, train_captions="vlm")
    with pytest.raises(GadmsError, match=r"hallucination rate must lie in \[0, 1\], got 1.5"):
        write_synthetic_benchmark(tmp_path, 1, 1, 1, 1, train_captions="vlm", templates=TEMPLATES,
                                  hallucination_rate=1.5)


def test_gap_closed_share_per_seed():
    # gap = 8 - 4 = 4: seeds at 6 and 8 close half and all of it.
    share = gap_closed([6.0, 8.0], [3.0, 5.0], [7.0, 9.0])
    assert share["values"] == [0.5, 1.0]
    assert share["mean"] == 0.75
    assert share["std"] == pytest.approx(math.sqrt(0.125), rel=1e-12)  # sample std of (0.5, 1.0); float rounding
    assert gap_closed([2.0, 3.0], [3.0, 5.0], [7.0, 9.0])["values"] == [-0.5, -0.25]  # worse than the baseline
    assert gap_closed([5.0], [5.0, 5.0], [4.0, 4.0]) is None  # clean no better: nothing to close


def test_noise_gap_against_three_seed_std():
    wide = noise_gap([10.0, 12.0], [4.0, 6.0])  # std sqrt(2) each
    assert wide["gap"] == 6.0 and wide["max_seed_std"] == pytest.approx(math.sqrt(2), rel=1e-12)
    assert wide["at_least_3_std"] is True
    narrow = noise_gap([10.0, 14.0], [8.0, 10.0])  # gap 3, std 2.83: 1.06 std
    assert narrow["gap"] == 3.0 and narrow["at_least_3_std"] is False


def test_pooled_auroc_counts_ties_half():
    # pairs (description, noise): 0.5>0.1, 0.5=0.5 (half), 0.9>0.1, 0.9>0.5 → 3.5 of 4
    assert pooled_auroc([0.1, 0.5], [0.5, 0.9]) == 0.875
    assert pooled_auroc([0.9], [0.1, 0.2]) == 0.0
    assert pooled_auroc([], [0.3]) is None


def test_mask_rates_average_the_training_steps_only(tmp_path):
    from benchmarks.gadms_effect import mask_rates

    keys = {"gass_noise_masked": 0.0, "gass_informative_masked": 1.0}
    lines = [{"kind": "train", "step": 1, "noise_mask_rate": 0.25, "mtp_mask_rate": 0.5, **keys},
             {"kind": "train", "step": 2, "noise_mask_rate": 0.75, "mtp_mask_rate": 0.5, **keys},
             {"kind": "val", "step": 2, "R1": 10.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert mask_rates(tmp_path) == {"noise_mask_rate": 0.5, "mtp_mask_rate": 0.5, "gass_noise_masked": 0.0,
                                    "gass_informative_masked": 1.0}
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "sdm": 3.0}) + "\n")
    assert mask_rates(tmp_path) == {}  # SDM masks nothing


def test_score_store_quality_compares_true_and_hallucinated_positions_only():
    from benchmarks.noisy_captions import score_store_quality

    scores = torch.tensor([[0.85, 0.9, 0.2, 0.5, 0.85], [0.85, 0.4, 0.6, 0.85, 0.85], [0.85, 0.3, 0.3, 0.3, 0.85]])
    labels = [[None, False, True, False, None],  # 0.9 > 0.2, 0.5 > 0.2: 2 of 2
              [None, True, False, None, None],  # 0.6 > 0.4: 1 of 1
              [None, False, False, False, None]]  # no hallucinated word: in the means, not in the AUROC
    quality = score_store_quality(scores, labels)
    assert quality["within_caption_auroc_description_over_noise"] == 1.0
    assert quality["mean_score_noise_tokens"] == pytest.approx(0.3, rel=1e-6)  # (0.2 + 0.4) / 2; float32 values
    assert quality["mean_score_description_tokens"] == pytest.approx((0.9 + 0.5 + 0.6 + 0.9) / 6, rel=1e-6)
    flipped = score_store_quality(scores, [[None, True, False, True, None], *labels[1:]])
    assert flipped["within_caption_auroc_description_over_noise"] == 1 / 3  # 0.2 < 0.9, 0.2 < 0.5; 0.6 > 0.4


def test_trace_summary_averages_seeds_step_by_step_and_refuses_other_steps():
    from benchmarks.gadms_effect import trace_summary

    seed0 = [{"step": 28, "auroc": 0.5}, {"step": 56, "auroc": 0.6}]
    seed1 = [{"step": 28, "auroc": 0.7}, {"step": 56, "auroc": 0.6}]
    summary = trace_summary([seed0, seed1])
    assert [point["step"] for point in summary] == [28, 56]
    assert summary[0]["auroc"]["mean"] == pytest.approx(0.6, rel=1e-12)
    assert summary[0]["auroc"]["values"] == [0.5, 0.7]
    assert summary[1]["auroc"] == {"mean": 0.6, "std": 0.0, "values": [0.6, 0.6]}
    with pytest.raises(ValueError, match=r"seeds checkpointed at different steps: \[\[28, 56\], \[28\]\]"):
        trace_summary([seed0, seed1[:1]])


def test_gass_is_read_at_every_epoch_checkpoint_of_a_gadms_run_and_a_finished_runs_states_are_deleted(tmp_path):
    from benchmarks.gadms_effect import TRACE_KEYS, train_run
    from flows.demo_clip import demo_clip_model_config

    _vlm_benchmark(tmp_path / "data", 1.0)
    spec = {"output_dir": str(tmp_path / "run"), "data": {"kind": "benchmark", "path": str(tmp_path / "data"),
                                                          "benchmark": "rstpreid"},
            "model": demo_clip_model_config(mode="gadms").model_dump(mode="json"), "epochs": 3,
            "batch_size": 2, "num_workers": 0, "seed": 0, "device": "cpu", "progress": False, "keep_checkpoints": 4}
    trace_job = {"output_dir": str(tmp_path / "run"), "labels_dir": str(tmp_path / "data" / "RSTPReid"),
                 "token_labels": train_token_labels(tmp_path / "data", 77), "device": "cpu"}
    run = train_run({"spec": spec, "trace": trace_job})
    trace = run["trace"]
    # 2 train pairs in batches of 2: one step per epoch, a checkpoint at each epoch's end.
    assert [point["step"] for point in trace] == [1, 2, 3]
    assert set(trace[0]) == {"step", *TRACE_KEYS, "score_store_within_caption_auroc_description_over_noise",
                             "score_store_mean_score_noise_tokens", "score_store_mean_score_description_tokens"}
    assert run["checkpoint"].endswith("best.pt")
    # Only the trace needed the epochs' states; the chosen model stays.
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []
    assert (tmp_path / "run" / "best.pt").exists()
    # A rerun reuses the run and reads the trace back from beside it.
    rerun = train_run({"spec": spec, "trace": trace_job})
    assert (rerun["checkpoint"], rerun["trace"]) == (run["checkpoint"], trace)
    # An untraced run has no trace; its states go too.
    untraced = train_run({"spec": spec | {"output_dir": str(tmp_path / "untraced")}, "trace": None})
    assert "trace" not in untraced
    assert list((tmp_path / "untraced" / "checkpoints").iterdir()) == []
    assert (tmp_path / "untraced" / "best.pt").exists()


def _log_line(image: bytes, caption: str, word: str, index: int) -> str:
    return json.dumps({"image_sha256": hashlib.sha256(image).hexdigest(), "caption": caption, "slot": "colour",
                       "word": word, "truth": "blue", "word_index": index}) + "\n"


def test_pipeline_pair_labels_follow_the_trainers_pair_order_and_the_vlm_log(tmp_path):
    root = tmp_path / "webperson"
    build_root(root)
    c0, c1 = crop(0), crop(1)  # 32 x 64 crops: below image_max_side, so sent as stored
    red = "A woman in a red coat and black boots."
    log = tmp_path / "hallucination_log.jsonl"
    log.write_text(_log_line(c0.image, red, "red", 4) + _log_line(c0.image, red, "red", 4)  # resent: one word
                   + _log_line(c1.image, red, "red", 4))  # another image's caption of the same words: not c0's
    labels = write_pair_labels(root, log, tmp_path / "labels", image_max_side=384)
    assert labels == {"pairs": 6, "logged_captions": 2, "logged_captions_in_shards": 1}

    noise_words = json.loads((tmp_path / "labels" / "noise_words.json").read_text())
    assert list(noise_words) == [f"{n:07d}.jpg" for n in range(6)]
    source = webperson_source(str(root))
    assert [source[pair].caption for pair in range(source.num_pairs)] == [v["caption"] for v in noise_words.values()]
    assert noise_words["0000000.jpg"]["noise"] == [False] * 4 + [True] + [False] * 4
    assert noise_words["0000000.jpg"]["sample_id"] == c0.sample_id
    assert noise_words["0000003.jpg"]["caption"] == "A man wears a blue shirt."  # caption2 "" repeats caption1
    assert not any(any(v["noise"]) for name, v in noise_words.items() if name != "0000000.jpg")
    assert (tmp_path / "labels" / "imgs" / "0000002.jpg").read_bytes() == c1.image
    data = TrainingData({"kind": "webperson", "path": str(root)}, tmp_path, tmp_path / "labels")
    first = data.token_labels(77)[0]
    # SOT, 8 words in one token each, "boots." in two, EOT: only "red" (position 5) is hallucinated.
    assert first[:13] == [None, False, False, False, False, True, False, False, False, False, False, None, None]

    log.write_text(_log_line(c0.image, red, "blue", 4))
    with pytest.raises(GadmsError, match=rf"^{log}: sample {c0.sample_id}: hallucinated word 'blue' at index 4"):
        write_pair_labels(root, log, tmp_path / "labels-2", image_max_side=384)


def test_the_benchmark_imports_where_prefect_is_not_installed():
    """--data synthetic runs on a GPU host that has the model's packages only: Prefect is imported by the
    pipeline mode alone."""
    import subprocess
    import sys

    blocker = ("import sys, importlib.abc\n"
               "class NoPrefect(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path, target=None):\n"
               "        if name.split('.')[0] == 'prefect':\n"
               "            raise ImportError('prefect is not installed')\n"
               "sys.meta_path.insert(0, NoPrefect())\n"
               "import benchmarks.gadms_effect\n"
               "print('prefect' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
