"""`gadms takedown`: remove the samples a blocklist names from a built root, under the root's build lock.

The work is storage.takedown_shards; this module only takes the lock a build takes (flows.locks), so a takedown and
a build never write one root at once, records the run and refreshes the catalog.
"""
from __future__ import annotations

import argparse
import json
import uuid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="output root with shards/ and manifest/")
    parser.add_argument("--list", required=True, action="append", dest="lists", metavar="FILE",
                        help="takedown list (url/domain/sha256/phash lines); repeat for several")
    parser.add_argument("--radius", type=int, default=None,
                        help="pHash entries match crops within this many bits (default: the dedup radius, 6)")
    parser.add_argument("--catalog", default=None, help="catalog file to refresh (default: <root>/catalog.duckdb)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from flows.locks import output_root_lock
    from storage.catalog import refresh
    from storage.errors import check_range
    from storage.fs import require_folder
    from storage.jobs import StageRun
    from storage.takedown import NEAR_DUPLICATE_RADIUS, parse_takedown_list, read_takedown_text, record_applied_list
    from storage.takedown_shards import remove_taken_down

    radius = NEAR_DUPLICATE_RADIUS if args.radius is None else args.radius
    check_range("--radius", radius, 0, 16)
    require_folder(args.root, "output root")
    texts = [(path, read_takedown_text(path)) for path in args.lists]
    takedown = parse_takedown_list("", "")
    for path, text in texts:  # every list is checked before anything is written
        takedown.extend(parse_takedown_list(text, path))
    run = StageRun.start(args.root, "takedown", uuid.uuid4().hex)
    with output_root_lock(args.root):
        for _, text in texts:  # kept before any shard changes: a rebuild honours it even if this run is killed
            record_applied_list(args.root, text)
        report = remove_taken_down(args.root, takedown, radius, run.run_id).as_dict()
        run.save_record({"lists": args.lists, "radius": radius, "entries": len(takedown)}, report, status="Completed")
        report["catalog"] = refresh(args.root, args.catalog, check_sha256=False)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        removed = ", ".join(f"{kind} {n}" for kind, n in report["removed"].items()) or "none"
        print(f"removed {report['removed_total']} sample(s) ({removed}) from {report['shards_rewritten']} of "
              f"{report['shards_checked']} shard(s); catalog: {report['catalog']}")
    return 0
