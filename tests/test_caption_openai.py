"""The caption stage against a real HTTP server on 127.0.0.1 (tests/openai_server.py, a stand-in for vllm serve),
including its faults: 500, 429 + Retry-After, timeouts, truncated and invalid bodies, unknown models."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import socket

import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation.caption import CaptionConfig, caption_crops
from curation.caption.client import ServerConfigError
from curation.caption.prompts import VERDICT_SCHEMA, assign_templates, load_templates
from flows.cli import main as gadms
from openai_server import VllmStandIn, fill_template
from storage.errors import GadmsError
from storage.records import Captions, PersonCrop, Reject, make_sample_id

MODEL = "stand-in-vlm"


def make_crop(n: int, size: tuple[int, int] = (128, 384), alt_text: str = "") -> PersonCrop:
    """A crop whose JPEG differs for every n (so every crop has its own image hash)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (n % 256, (n * 7) % 256, 90 + n // 256)).save(buffer, format="JPEG", quality=90)
    image = buffer.getvalue()
    source = hashlib.sha256(f"page-image-{n}".encode()).hexdigest()
    bbox = (0.0, 0.0, float(size[0]), float(size[1]))
    return PersonCrop(
        sample_id=make_sample_id(source, bbox), source_url=f"http://web.example/{n}.jpg", page_url="",
        alt_text=alt_text, source_sha256=source, image=image, width=size[0], height=size[1], bbox=bbox,
        det_score=0.9, keypoints=None, phash=n, crop_sha256=hashlib.sha256(image).hexdigest(),
    )


@pytest.fixture
def server():
    stand_in = VllmStandIn(models=[MODEL, "second-vlm"]).start()
    yield stand_in
    stand_in.stop()


def config_for(server: VllmStandIn, **changes) -> CaptionConfig:
    settings = {"endpoints": [server.base_url], "models": [MODEL], "backoff_base_s": 0.01, "backoff_max_s": 2.0,
                "retries": 2}
    settings.update(changes)
    return CaptionConfig(**settings)


def sent_image(body: dict) -> Image.Image:
    text, image = body["messages"][0]["content"]
    assert text["type"] == "text" and image["type"] == "image_url"  # shared instruction prefix first
    url = image["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def kinds(server: VllmStandIn) -> list[str]:
    return ["filter" if "structured_outputs" in b else "caption" for b in server.chat_requests]


def test_each_crop_gets_two_captions_following_its_assigned_templates(server, tmp_path):
    crops = [make_crop(n) for n in range(3)]
    captions, rejects = caption_crops(crops, config_for(server), tmp_path)
    bank = load_templates(CaptionConfig().templates_path)
    assert rejects == []
    assert len(server.chat_requests) == 9  # filter + 2 captions per crop
    for crop, result in zip(crops, captions):
        first, second = assign_templates(crop.sample_id, bank, 2, salt="v1")
        assert result == Captions(crop.sample_id, fill_template(first.text), fill_template(second.text), MODEL,
                                  "openai", f"{first.id},{second.id}", "v1",
                                  filter_keep=True, filter_reason="one_clear_person", filter_model=MODEL)


def test_template_assignment_is_deterministic_and_spread(server, tmp_path):
    bank = load_templates(CaptionConfig().templates_path)
    draws = [assign_templates(f"sample-{i}", bank, 2, salt="v1") for i in range(3000)]
    assert draws == [assign_templates(f"sample-{i}", bank, 2, salt="v1") for i in range(3000)]
    assert all(first.id != second.id for first, second in draws)
    assert {t.id for pair in draws for t in pair} == {t.id for t in bank}  # every template gets used
    crops = [make_crop(n) for n in range(2)]
    first_run, _ = caption_crops(crops, config_for(server), tmp_path / "a")
    second_run, _ = caption_crops(crops, config_for(server), tmp_path / "b")  # new cache: asks again
    assert len(server.chat_requests) == 12
    assert [c.template_id for c in first_run] == [c.template_id for c in second_run]


def test_request_format_structured_outputs_image_and_seeds(server, tmp_path):
    small, large = make_crop(1), make_crop(2, size=(300, 900))
    caption_crops([small], config_for(server), tmp_path)
    filter_body = server.chat_requests[0]
    assert filter_body["structured_outputs"] == {"json": VERDICT_SCHEMA}
    assert "guided_json" not in filter_body and filter_body["temperature"] == 0.0
    assert sent_image(filter_body).size == (128, 384)  # within image_max_side: sent as is
    caption_bodies = server.chat_requests[1:]
    assert {b["temperature"] for b in caption_bodies} == {0.7} and {b["max_tokens"] for b in caption_bodies} == {160}
    assert len({b["seed"] for b in caption_bodies}) == 2
    assert all("structured_outputs" not in b for b in caption_bodies)

    caption_crops([large], config_for(server, structured_outputs="guided_json"), tmp_path)
    assert server.chat_requests[3]["guided_json"] == VERDICT_SCHEMA
    assert sent_image(server.chat_requests[3]).size == (128, 384)  # 300x900 shrunk to max side 384
    caption_crops([make_crop(3)], config_for(server, structured_outputs="none"), tmp_path)
    assert not {"guided_json", "structured_outputs"} & set(server.chat_requests[6])


def test_rerun_sends_nothing_and_changed_sampling_only_new_captions(server, tmp_path):
    crops = [make_crop(n) for n in range(4)]
    first, _ = caption_crops(crops, config_for(server), tmp_path)
    assert len(server.chat_requests) == 12
    again, _ = caption_crops(crops, config_for(server), tmp_path)
    assert again == first and len(server.chat_requests) == 12
    hotter = config_for(server, sampling={"temperature": 0.9})
    caption_crops(crops, hotter, tmp_path)
    assert kinds(server)[12:] == ["caption"] * 8  # the greedy verdicts came from the cache


def test_cache_dir_must_be_local(server):
    with pytest.raises(GadmsError, match="caption cache_dir s3://bucket/work/caption-cache: must be a local folder"):
        caption_crops([make_crop(1)], config_for(server), "s3://bucket/work/caption-cache")


def test_filter_verdict_rejects_with_its_reason(server, tmp_path):
    crops = [make_crop(n) for n in range(3)]
    server.verdicts[crops[1].crop_sha256] = {"keep": False, "reason": "mannequin"}
    captions, rejects = caption_crops(crops, config_for(server), tmp_path)
    assert [c.sample_id for c in captions] == [crops[0].sample_id, crops[2].sample_id]
    assert rejects == [Reject("filter", "mannequin", crops[1].source_url, crops[1].sample_id,
                              f"verdict of {MODEL}", bbox=crops[1].bbox)]
    assert kinds(server).count("caption") == 4


def test_filter_off_sends_captions_only(server, tmp_path):
    captions, _ = caption_crops([make_crop(1)], config_for(server, filter=False), tmp_path)
    assert len(captions) == 1 and kinds(server) == ["caption", "caption"]


@pytest.mark.parametrize("faults", [["500", "500"], ["truncated", "invalid_json"], ["500", "truncated"]])
def test_transport_faults_are_retried(server, tmp_path, faults):
    server.faults.extend(faults)
    captions, rejects = caption_crops([make_crop(1)], config_for(server), tmp_path)
    assert rejects == [] and len(captions) == 1
    assert len(server.chat_requests) == 3 + len(faults)


@pytest.mark.parametrize(
    "fault, reason", [("500", "http_500"), ("truncated", "truncated_response"), ("invalid_json", "invalid_json_response")]
)
def test_fault_after_the_last_retry_becomes_a_reject(server, tmp_path, fault, reason):
    crops = [make_crop(1), make_crop(2)]
    server.faults.extend([fault] * 3)  # the first crop's verdict request and its two retries
    captions, rejects = caption_crops(crops[:1], config_for(server), tmp_path)
    assert captions == [] and [(r.stage, r.reason, r.sample_id) for r in rejects] == [
        ("filter", reason, crops[0].sample_id)]
    assert server.base_url in rejects[0].detail
    captions, rejects = caption_crops(crops, config_for(server), tmp_path)  # the failure was not cached
    assert len(captions) == 2 and rejects == []


def test_a_refused_request_is_not_retried(server, tmp_path):
    server.faults.append("400")
    _, rejects = caption_crops([make_crop(1)], config_for(server), tmp_path)
    assert [(r.stage, r.reason) for r in rejects] == [("filter", "http_400")]
    assert "this request is invalid" in rejects[0].detail and len(server.chat_requests) == 1


def test_429_waits_for_retry_after(server, tmp_path):
    server.retry_after = "1"
    server.faults.append("429")
    captions, _ = caption_crops([make_crop(1)], config_for(server), tmp_path)
    assert len(captions) == 1
    assert server.request_times[1] - server.request_times[0] >= 0.95


def test_timeout_is_retried_then_rejected(server, tmp_path):
    server.hang_s = 2.0
    server.faults.append("timeout")
    captions, _ = caption_crops([make_crop(1)], config_for(server, request_timeout_s=0.5), tmp_path / "a")
    assert len(captions) == 1 and len(server.chat_requests) == 4
    server.faults.append("timeout")
    _, rejects = caption_crops([make_crop(1)], config_for(server, request_timeout_s=0.5, retries=0), tmp_path / "b")
    assert [(r.stage, r.reason) for r in rejects] == [("filter", "timeout")]


@pytest.mark.parametrize("answer", ["keep it", '{"keep": true}', '{"keep": true, "reason": "mannequin"}'])
def test_invalid_verdict_is_asked_again_then_rejected(server, tmp_path, answer):
    server.faults.extend([f"content:{answer}"] * 2)
    captions, rejects = caption_crops([make_crop(1)], config_for(server, invalid_output_retries=1), tmp_path)
    assert captions == [] and [(r.stage, r.reason) for r in rejects] == [("filter", "invalid_filter_answer")]
    assert repr(answer)[:20] in rejects[0].detail and len(server.chat_requests) == 2


def test_verdict_in_a_code_fence_is_accepted(server, tmp_path):
    server.faults.append('content:```json\n{"keep": false, "reason": "several_people"}\n```')
    _, rejects = caption_crops([make_crop(1)], config_for(server), tmp_path)
    assert [(r.stage, r.reason) for r in rejects] == [("filter", "several_people")]


def test_unknown_model_is_an_error_naming_model_and_endpoint(server, tmp_path):
    with pytest.raises(GadmsError, match=rf"endpoint {server.base_url}: model 'no-such-vlm' is not served"):
        caption_crops([make_crop(1)], config_for(server, models=["no-such-vlm"]), tmp_path)
    assert server.chat_requests == []
    # Without the /v1/models check, the server's 404 on the first request says the same.
    unchecked = config_for(server, models=["no-such-vlm"], check_models=False)
    with pytest.raises(ServerConfigError, match=rf"endpoint {server.base_url}: model 'no-such-vlm' does not exist"):
        caption_crops([make_crop(1)], unchecked, tmp_path)


def test_unreachable_endpoint_is_an_error_never_an_alt_text_fallback(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = CaptionConfig(endpoints=[f"http://127.0.0.1:{port}/v1"], models=[MODEL])
    with pytest.raises(GadmsError, match=rf"endpoint http://127.0.0.1:{port}/v1: cannot reach it"):
        caption_crops([make_crop(1, alt_text="woman in a red coat and black trousers")], config, tmp_path)


def test_a_server_failing_every_request_stops_the_chunk(server, tmp_path):
    server.faults.extend(["500"] * 100)
    config = config_for(server, retries=0, abort_after_consecutive_failures=3, in_flight_per_endpoint=1)
    with pytest.raises(ServerConfigError, match="3 requests in a row failed after retries, last: http_500"):
        caption_crops([make_crop(n) for n in range(10)], config, tmp_path)


def test_load_balancing_and_in_flight_bound(tmp_path):
    first, second = VllmStandIn([MODEL], latency_s=0.05).start(), VllmStandIn([MODEL], latency_s=0.05).start()
    try:
        config = CaptionConfig(endpoints=[first.base_url, second.base_url], models=[MODEL], in_flight_per_endpoint=2)
        captions, _ = caption_crops([make_crop(n) for n in range(8)], config, tmp_path)
        assert len(captions) == 8
        assert len(first.chat_requests) + len(second.chat_requests) == 24
        assert len(first.chat_requests) >= 8 and len(second.chat_requests) >= 8
        assert first.max_in_flight == 2 and second.max_in_flight == 2
    finally:
        first.stop()
        second.stop()


def test_two_models_share_the_template(server, tmp_path):
    config = config_for(server, models=[MODEL, "second-vlm"], caption_mode="two_models")
    crop = make_crop(5)
    (captions,), _ = caption_crops([crop], config, tmp_path)
    (template,) = assign_templates(crop.sample_id, load_templates(config.templates_path), 1, salt="v1")
    assert captions.caption_model == f"{MODEL},second-vlm" and captions.template_id == template.id
    assert [b["model"] for b in server.chat_requests] == [MODEL, MODEL, "second-vlm"] or \
        [b["model"] for b in server.chat_requests] == [MODEL, "second-vlm", MODEL]


def test_two_samples_differ_only_in_seed(server, tmp_path):
    (captions,), _ = caption_crops([make_crop(5)], config_for(server, caption_mode="two_samples"), tmp_path)
    first, second = server.chat_requests[1:]
    assert first["messages"] == second["messages"] and first["seed"] != second["seed"]
    assert "," not in captions.template_id


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("I'm sorry, but I cannot describe people in images.", "refusal"),
        ("A woman who seems to be wearing a red T-shirt and blue jeans walks.", "hedging"),
        ("A woman in a [colored top] and blue jeans is walking forward today.", "unfilled_placeholder"),
        ("   ", "empty"),
    ],
)
def test_bad_captions_from_the_model_become_quality_rejects(server, tmp_path, answer, reason):
    server.answer_override = lambda body: answer if "Template:" in json.dumps(body) else None
    captions, rejects = caption_crops([make_crop(1)], config_for(server), tmp_path)
    assert captions == [] and [(r.stage, r.reason) for r in rejects] == [("quality", reason)]
    assert rejects[0].detail.startswith("caption1: ")


def test_alt_text_backend_is_marked_and_rejects_junk(tmp_path):
    crops = [
        make_crop(1, alt_text="buy now | woman in a red coat , black trousers and white shoes - free shipping"),
        make_crop(2, alt_text="IMG_4821.JPG"),
        make_crop(3, alt_text="mujer con un abrigo rojo y pantalones negros"),
        make_crop(4, alt_text="wallpaper HD autumn"),
    ]
    captions, rejects = caption_crops(crops, CaptionConfig(backend="alt-text"), tmp_path)
    assert captions == [Captions(crops[0].sample_id, "Woman in a red coat, black trousers and white shoes.", "",
                                 "alt-text", "alt-text", "", "v1")]
    assert [(r.sample_id, r.stage, r.reason) for r in rejects] == [
        (crops[1].sample_id, "caption", "empty_alt_text"),
        (crops[2].sample_id, "quality", "not_english"),
        (crops[3].sample_id, "quality", "too_short"),
    ]


def _write_crops(path, crops: list[PersonCrop]) -> None:
    import pyarrow as pa

    rows = [{"sample_id": c.sample_id, "image": c.image, "source_url": c.source_url, "alt_text": c.alt_text}
            for c in crops]
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_caption_cli_writes_captions_rejects_and_reuses_the_cache(server, tmp_path, capsys):
    crops = [make_crop(n) for n in range(4)]
    server.verdicts[crops[3].crop_sha256] = {"keep": False, "reason": "drawing_or_render"}
    _write_crops(tmp_path / "crops.parquet", crops)
    arguments = ["caption", "--crops", str(tmp_path / "crops.parquet"), "--out", str(tmp_path / "out"),
                 "--endpoint", server.base_url, "--model", MODEL]
    assert gadms(arguments) == 0
    assert "4 crops: 3 captioned, 1 rejected" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "out" / "captions.parquet").to_pylist()
    assert [row["sample_id"] for row in table] == [c.sample_id for c in crops[:3]]
    assert {row["caption_backend"] for row in table} == {"openai"}
    # The filter's verdict travels with the captions, column for column as the shards hold it.
    assert {(row["filter_keep"], row["filter_reason"], row["filter_model"]) for row in table} == {
        (True, "one_clear_person", MODEL)}
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert [(r["sample_id"], r["stage"], r["reason"]) for r in rejects] == [
        (crops[3].sample_id, "filter", "drawing_or_render")]
    sent = len(server.chat_requests)
    assert gadms(arguments) == 0 and len(server.chat_requests) == sent


def test_caption_cli_names_the_missing_column(tmp_path, capsys):
    import pyarrow as pa

    pq.write_table(pa.table({"sample_id": ["x"]}), tmp_path / "bad.parquet")
    assert gadms(["caption", "--crops", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o"),
                  "--backend", "alt-text"]) == 2
    assert capsys.readouterr().err.strip() == f"gadms caption: error: {tmp_path / 'bad.parquet'}: missing column(s) image"


def test_caption_cli_alt_text_backend_with_limit(tmp_path, capsys):
    crops = [make_crop(n, alt_text="man in a grey coat and black trousers 1024") for n in range(3)]
    _write_crops(tmp_path / "crops.parquet", crops)
    assert gadms(["caption", "--crops", str(tmp_path / "crops.parquet"), "--out", str(tmp_path / "out"),
                  "--backend", "alt-text", "--limit", "2"]) == 0
    assert "2 crops: 2 captioned, 0 rejected" in capsys.readouterr().out
    rows = pq.read_table(tmp_path / "out" / "captions.parquet").to_pylist()
    assert [(r["caption1"], r["caption2"], r["caption_backend"]) for r in rows] == [
        ("Man in a grey coat and black trousers.", "", "alt-text")] * 2
    assert {(r["filter_keep"], r["filter_reason"], r["filter_model"]) for r in rows} == {(None, None, None)}  # no filter


def test_caption_crops_works_when_called_inside_an_event_loop(server, tmp_path):
    import asyncio

    async def from_async_code():
        return caption_crops([make_crop(1)], config_for(server), tmp_path)

    captions, rejects = asyncio.run(from_async_code())
    assert len(captions) == 1 and rejects == []


def test_open_clients_quiet_the_garbage_collector_until_the_last_one_closes(server):
    import asyncio
    import gc

    from curation.caption.client import ChatClient

    async def scenario() -> list[tuple]:
        seen = [(gc.get_threshold(), gc.get_freeze_count() > 0)]
        async with ChatClient([server.base_url]) as outer:
            seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))
            async with ChatClient([server.base_url]):
                await outer.check_models([MODEL])
                seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))
            seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))
        seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))
        return seen

    gc.unfreeze()
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        quiet = ((10_000, 10, 10), True)
        assert asyncio.run(scenario()) == [((700, 10, 10), False), quiet, quiet, quiet, ((700, 10, 10), False)]
    finally:
        gc.set_threshold(*saved)
