"""Caption client throughput: requests/s and client CPU per request versus the in-flight limit.

Starts the vLLM stand-in (tests/openai_server.py --canned) in its own process, answering every chat request after
a fixed latency, so the ideal throughput is in_flight / latency. For each in-flight limit it sends `rounds × in_flight`
caption requests (a 128×384 JPEG as a base64 data URL, the real caption prompt) through the caption stage's
OpenAIBackend, and measures wall time and this process's CPU time. Then it runs `caption_crops` end to end
(filter verdict + 2 captions per crop, request cache, quality checks) at the largest limit.

    nice -n 10 .venv/bin/python benchmarks/caption_client.py            # → benchmarks/results/caption_client.json
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.caption.backends import OpenAIBackend, Question  # noqa: E402
from curation.caption.config import CaptionConfig  # noqa: E402
from curation.caption.pipeline import caption_crops  # noqa: E402
from curation.caption.prompts import Template, load_prompts  # noqa: E402
from storage.records import PersonCrop, make_sample_id  # noqa: E402

MODEL = "stand-in-vlm"


def start_server(latency: float, canned: bool) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(ROOT / "tests" / "openai_server.py"), "--latency", str(latency), "--model", MODEL]
    process = subprocess.Popen(command + (["--canned"] if canned else []), stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"stand-in server did not start: {line!r}")
    return process, line.removeprefix("listening on ")


def crop_jpeg(n: int) -> bytes:
    """A 128×384 crop of scikit-image's astronaut photo (a person), shifted by n pixels: real JPEG sizes."""
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    left = 150 + n % 64
    buffer = io.BytesIO()
    photo.crop((left, 0, left + 171, 512)).resize((128, 384)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late 5 ms sleeps wake up: the event loop's own work plus the time the OS did not run us."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.005)
        samples.append(time.perf_counter() - start - 0.005)


async def sweep_point(url: str, server_pid: int, in_flight: int, rounds: int, image: bytes, prompt: str,
                      watch_loop: bool = False) -> dict:
    """One timed run; with `watch_loop`, also event-loop lag (the watcher's own CPU then inflates the CPU
    figures, so watched runs are reported for their lag only)."""
    config = CaptionConfig(endpoints=[url], models=[MODEL], in_flight_per_endpoint=in_flight, check_models=False)
    # As caption_crops does: at most 2 × in_flight requests under way, so request bodies are built shortly
    # before a slot frees, not all at once at the start.
    under_way = asyncio.Semaphore(2 * in_flight)
    async with OpenAIBackend(config) as backend:

        async def one(i: int) -> str:
            async with under_way:
                question = Question("caption", MODEL, prompt, image, 160, 0.7, 0.9, i)
                return await backend.answer(question)

        await asyncio.gather(*(one(i) for i in range(in_flight)))  # warm-up: open the connections
        count = in_flight * rounds
        lags: list[float] = []
        stop = asyncio.Event()
        monitor = asyncio.create_task(_loop_lag(lags, stop)) if watch_loop else None
        server_cpu = process_cpu_s(server_pid)
        cpu, wall = time.process_time(), time.perf_counter()
        answers = await asyncio.gather(*(one(i) for i in range(count)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_cpu = process_cpu_s(server_pid) - server_cpu
        if monitor is not None:
            stop.set()
            await monitor
    assert len(answers) == count and all(answers)
    if watch_loop:
        lags.sort()
        return {"event_loop_lag_ms_p50": round(1000 * lags[len(lags) // 2], 2),
                "event_loop_lag_ms_p99": round(1000 * lags[int(len(lags) * 0.99)], 2)}
    return {"in_flight": in_flight, "requests": count, "wall_s": round(wall, 3),
            "requests_per_s": round(count / wall, 1), "client_cpu_ms_per_request": round(1000 * cpu / count, 3),
            "server_cpu_ms_per_request": round(1000 * server_cpu / count, 3),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def end_to_end(url: str, in_flight: int, crops: int) -> dict:
    images = [crop_jpeg(n) for n in range(crops)]
    records = []
    for n, image in enumerate(images):
        source = hashlib.sha256(f"bench-{n}".encode()).hexdigest()
        bbox = (0.0, 0.0, 128.0, 384.0)
        records.append(PersonCrop(make_sample_id(source, bbox), f"http://bench.example/{n}.jpg", "", "", source,
                                  image, 128, 384, bbox, 0.9, None, n, hashlib.sha256(image).hexdigest()))
    config = CaptionConfig(endpoints=[url], models=[MODEL], in_flight_per_endpoint=in_flight)
    with tempfile.TemporaryDirectory() as cache:
        cpu, wall = time.process_time(), time.perf_counter()
        captions, rejects = caption_crops(records, config, cache)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    requests = 3 * crops
    assert len(captions) == crops and not rejects
    return {"in_flight": in_flight, "crops": crops, "requests": requests, "wall_s": round(wall, 3),
            "crops_per_s": round(crops / wall, 1), "requests_per_s": round(requests / wall, 1),
            "client_cpu_ms_per_request": round(1000 * cpu / requests, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 8, 32, 64, 128, 256])
    # 20 latency periods: the first one includes building and sending the whole first burst of requests at
    # once, a start-up cost that a real run (thousands of crops) pays once; with 10 it was 4% of the measure.
    parser.add_argument("--rounds", type=int, default=20, help="requests per point = rounds × in-flight")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point; the fastest is reported")
    parser.add_argument("--e2e-crops", type=int, default=1024)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "caption_client.json"))
    args = parser.parse_args()

    image = crop_jpeg(0)
    prompts = load_prompts(CaptionConfig().prompts_path, "v1")
    prompt = prompts.caption_prompt(Template("t", "A [man/woman] in a [colored top] and [colored bottom]."), 80)
    points = []
    server, url = start_server(args.latency, canned=True)
    try:
        for in_flight in args.in_flight:
            # Shared machines are noisy: keep the best of a few repeats (as timeit does), record them all.
            runs = [asyncio.run(sweep_point(url, server.pid, in_flight, args.rounds, image, prompt))
                    for _ in range(args.repeats)]
            point = max(runs, key=lambda run: run["requests_per_s"])
            point["all_requests_per_s"] = [run["requests_per_s"] for run in runs]
            # One more, watched run: how late the event loop wakes up (our work + time the OS did not run us).
            point.update(asyncio.run(sweep_point(url, server.pid, in_flight, args.rounds, image, prompt, True)))
            point["ideal_requests_per_s"] = round(in_flight / args.latency, 1)
            point["fraction_of_ideal"] = round(point["requests_per_s"] / point["ideal_requests_per_s"], 3)
            # What one core could drive if the client alone were the limit (CPU per request is the client's cost).
            point["client_bound_requests_per_s_per_core"] = round(1000 / point["client_cpu_ms_per_request"])
            points.append(point)
            print(json.dumps(point), flush=True)
    finally:
        server.terminate()
        server.wait(10)
    # End to end needs the full stand-in: JSON verdicts and captions that follow their templates.
    server, url = start_server(args.latency, canned=False)
    try:
        e2e = end_to_end(url, max(args.in_flight), args.e2e_crops)
        print(json.dumps({"end_to_end": e2e}), flush=True)
    finally:
        server.terminate()
        server.wait(10)

    result = {
        "benchmark": "caption_client",
        "server": "tests/openai_server.py (vLLM stand-in) in its own process, fixed latency; --canned for the sweep",
        "latency_s": args.latency,
        "rounds_per_point": args.rounds,
        "repeats_per_point": args.repeats,
        "image_bytes": len(image),
        "sweep": points,
        "end_to_end_caption_crops": e2e,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
    }
    result["targets"] = {
        "fraction_of_ideal_at_least_0.9": all(p["fraction_of_ideal"] >= 0.9 for p in points),
        "client_cpu_below_2ms_per_request": all(p["client_cpu_ms_per_request"] < 2.0 for p in points),
    }
    print(json.dumps({"targets": result["targets"]}))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
