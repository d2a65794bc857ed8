"""The transformers backend on a tiny, randomly initialised Qwen2.5-VL built in-process (nothing downloaded).

No Qwen tokenizer files exist offline, so the tokenizer is a small byte-level BPE trained here with the
`tokenizers` library on a few sentences, with Qwen's special tokens (<|im_start|>, <|image_pad|>, ...) and a
minimal chat template; the image processor is transformers' own Qwen2VLImageProcessor with a small max_pixels.
"""
from __future__ import annotations

import pytest

from curation.caption import CaptionConfig, caption_crops
from curation.caption.backends import TransformersBackend
from test_caption_openai import make_crop

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2_5_vl(folder) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["A woman wears a red shirt and blue jeans.", "He carries a black bag."] * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
        tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE,
    )
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4, "out_hidden_size": 32,
                       "fullatt_block_indexes": [1], "window_size": 56},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen2.5-vl")
    build_tiny_qwen2_5_vl(folder)
    return folder


def local_config(model_dir, **changes) -> CaptionConfig:
    settings = {"backend": "transformers", "transformers_model_dir": str(model_dir), "filter": False,
                "sampling": {"temperature": 0.0, "max_tokens": 12}, "quality": {"enabled": False}}
    settings.update(changes)
    return CaptionConfig(**settings)


@pytest.mark.slow
def test_tiny_random_vlm_captions_and_the_cache_spares_a_rerun(tiny_vlm, tmp_path, monkeypatch):
    calls = []
    generate = TransformersBackend._generate
    monkeypatch.setattr(TransformersBackend, "_generate", lambda self, q: calls.append(q) or generate(self, q))
    crops = [make_crop(n) for n in range(2)]
    captions, rejects = caption_crops(crops, local_config(tiny_vlm), tmp_path)
    assert rejects == [] and len(calls) == 4
    assert [c.sample_id for c in captions] == [c.sample_id for c in crops]
    assert {(c.caption_backend, c.caption_model, c.prompt_version) for c in captions} == {
        ("transformers", tiny_vlm.name, "v1")}
    assert all(len(c.template_id.split(",")) == 2 for c in captions)
    assert all(q.image is not None and "Template:" in q.prompt for q in calls)
    again, _ = caption_crops(crops, local_config(tiny_vlm), tmp_path)
    assert again == captions and len(calls) == 4
    # Greedy decoding is deterministic: a fresh cache regenerates the very same captions.
    fresh, _ = caption_crops(crops, local_config(tiny_vlm), tmp_path / "fresh")
    assert fresh == captions and len(calls) == 8


def test_tiny_random_vlm_answers_become_rejects_not_crashes(tiny_vlm, tmp_path):
    crops = [make_crop(n) for n in range(2)]
    config = local_config(tiny_vlm, filter=True, filter_max_tokens=8, invalid_output_retries=0)
    captions, rejects = caption_crops(crops, config, tmp_path)
    assert captions == []
    assert [(r.stage, r.reason) for r in rejects] == [("filter", "invalid_filter_answer")] * 2
    _, rejects = caption_crops(crops, local_config(tiny_vlm, quality={"enabled": True}), tmp_path)
    assert [r.stage for r in rejects] == ["quality", "quality"]  # random tokens are no English caption


def test_transformers_backend_needs_a_model_folder(tmp_path):
    from storage.errors import GadmsError

    with pytest.raises(ValueError, match="transformers_model_dir"):
        CaptionConfig(backend="transformers")
    with pytest.raises(GadmsError, match="no config.json there"):
        caption_crops([make_crop(1)], local_config(tmp_path / "missing"), tmp_path)


def test_the_caption_command_loads_the_backend_in_a_fresh_process(tiny_vlm, tmp_path):
    """`gadms caption --backend transformers` as a user runs it: a new process, where nothing imported torchvision's
    ops shim before transformers (whose Qwen2.5-VL processor imports torchvision)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    crop = make_crop(1)
    pq.write_table(pa.Table.from_pylist([{"sample_id": crop.sample_id, "image": crop.image}]), tmp_path / "crops.parquet")
    (tmp_path / "caption.yaml").write_text(f"backend: transformers\ntransformers_model_dir: {tiny_vlm}\nfilter: true\n"
                                           "filter_max_tokens: 8\ninvalid_output_retries: 0\n")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "caption", "--crops", str(tmp_path / "crops.parquet"),
         "--out", str(tmp_path / "out"), "--config", str(tmp_path / "caption.yaml")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"1 crops: 0 captioned, 1 rejected → {tmp_path / 'out'}" in done.stdout
    assert pq.read_table(tmp_path / "out" / "rejects.parquet").column("reason").to_pylist() == ["invalid_filter_answer"]
