"""`gadms synthweb render|serve|serve-vlm|urls|train-detector`: the synthetic person web and its demo detector."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """Add the actions; returns the subparsers, to which flows.synthweb_cli adds train-clip."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION")

    render = sub.add_parser("render", help="render a static site with ground truth")
    render.add_argument("--out", required=True, help="output folder (new or empty)")
    render.add_argument("--images", type=int, default=200, help="number of rendered scenes (default 200)")
    render.add_argument("--seed", type=int, default=0)
    render.set_defaults(func=_render)

    serve = sub.add_parser("serve", help="serve a rendered site on 127.0.0.1 until interrupted")
    serve.add_argument("site_dir")
    serve.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    serve.add_argument("--slow-seconds", type=float, default=5.0, help="delay of the slow endpoint")
    serve.set_defaults(func=_serve)

    vlm = sub.add_parser("serve-vlm", help="serve the SIMULATED VLM (no model) over the OpenAI protocol")
    vlm.add_argument("site_dir", help="a rendered site: the persons it recognises")
    vlm.add_argument("--port", type=int, default=8001, help="port on 127.0.0.1 (0: any free port)")
    vlm.add_argument("--hallucination-rate", type=float, default=0.0, help="share of slots filled wrongly")
    vlm.add_argument("--hallucination-log", help="JSONL file: one line per hallucinated word")
    vlm.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    vlm.set_defaults(func=_serve_vlm)

    urls = sub.add_parser("urls", help="write the site's image URLs + alt text as an img2dataset list")
    urls.add_argument("site_dir")
    urls.add_argument("--base-url", required=True, help="where the site is served, e.g. http://127.0.0.1:8000")
    urls.add_argument("--out", required=True, help="output file, .parquet or .jsonl")
    urls.set_defaults(func=_urls)

    train = sub.add_parser("train-detector", help="render a YOLO pose dataset and train the demo detector")
    train.add_argument("--out", required=True, help="work folder: dataset/, runs/, weights and metrics")
    train.add_argument("--train-images", type=int, default=6000)
    train.add_argument("--val-images", type=int, default=400)
    train.add_argument("--epochs", type=int, default=40)
    train.add_argument("--imgsz", type=int, default=256)
    train.add_argument("--batch", type=int, default=16)
    train.add_argument("--nbs", type=int, default=16, help="nominal batch size (ultralytics default 64)")
    train.add_argument("--device", default="cpu", help="cpu, 0 (first GPU), ...")
    train.add_argument("--workers", type=int, default=2, help="ultralytics data-loader workers")
    train.add_argument("--render-workers", type=int, default=1, help="processes rendering the dataset")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--model", default="yolo11n-pose.yaml", help="model config (from scratch) or weights")
    train.add_argument("--time-hours", type=float, default=None, help="stop training after this many hours")
    train.set_defaults(func=_train)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return sub


def _render(args) -> int:
    from curation.synthweb.site import render_site

    info = render_site(args.out, args.images, args.seed)
    print(f"rendered {info.scenes} scenes, {info.records} image URLs, {info.pages} pages into {info.root}")
    print(f"ground truth: {info.ground_truth}")
    return 0


def _serve(args) -> int:
    import threading

    from curation.synthweb.server import SiteServer
    from storage.errors import check_range

    check_range("--port", args.port, 0, 65535)
    check_range("--slow-seconds", args.slow_seconds, 0, 600)
    with SiteServer(args.site_dir, port=args.port, slow_seconds=args.slow_seconds) as server:
        print(f"serving {args.site_dir} at {server.base_url}/ (Ctrl-C stops)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


def _urls(args) -> int:
    from curation.synthweb.site import write_url_list

    rows = write_url_list(args.site_dir, args.base_url, args.out)
    print(f"wrote {rows} URLs to {args.out}")
    return 0


def _serve_vlm(args) -> int:
    import threading

    from curation.synthweb.vlm import SIMULATED_MODEL_NAME, SimulatedVlm, SimulatedVlmServer
    from storage.errors import check_range

    check_range("--port", args.port, 0, 65535)
    check_range("--latency", args.latency, 0, 600)
    vlm = SimulatedVlm(args.site_dir, args.hallucination_rate, args.hallucination_log)
    server = SimulatedVlmServer(vlm, latency_s=args.latency).start(args.port)
    print(f"SIMULATED VLM (no model) '{SIMULATED_MODEL_NAME}' on {server.base_url}, "
          f"{len(vlm.index.persons)} site persons, hallucination rate {args.hallucination_rate}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _train(args) -> int:
    from curation.synthweb.detector import DetectorTrainConfig, train_detector
    from storage.configfile import validate_config

    from storage.devices import existing_device

    options = {name: getattr(args, name) for name in DetectorTrainConfig.model_fields}
    config = validate_config(options, DetectorTrainConfig, "train-detector options")
    for device in config.torch_devices():  # before the dataset is rendered
        existing_device(device, "--device")
    metrics = train_detector(config)
    print(f"weights: {metrics['weights']}")
    print(f"held-out box mAP50 {metrics['box_map50']:.3f}, pose mAP50 {metrics['pose_map50']:.3f}")
    return 0
