"""Prefect artifacts of the flows: what a person looks at in the UI after a run."""
from __future__ import annotations

import base64
from pathlib import Path

from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from storage.catalog import connect
from storage.reports import caption_length_histogram_png, sample_contact_sheet_png


def png_data_url(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def build_summary_markdown(summary: dict, pictures: dict[str, Path]) -> str:
    lines = [
        "# build-webperson",
        "",
        "| chunks | skipped (complete) | URLs | downloaded | persons | unique | kept | seconds | images/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {summary['chunks']} | {summary['chunks_skipped']} | {summary['urls']} | {summary['downloaded']} | "
        f"{summary['persons']} | {summary['unique']} | {summary['kept']} | {summary['seconds']} | "
        f"{summary['images_per_second']} |",
        "",
        *([f"Retried (`--retry-failed {','.join(summary['retry_failed'])}`): {summary['retried']} URLs, "
           f"{summary['superseded']} earlier rejects superseded", ""] if summary.get("retry_failed") else []),
        "## Rejected, by stage and reason",
        "",
        "| stage/reason | count |",
        "|---|---:|",
        *[f"| {reason} | {count} |" for reason, count in summary["rejects"].items()],
        "",
        "## Stage timings (seconds, summed over chunks)",
        "",
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {stage} | {seconds} |" for stage, seconds in summary["stage_seconds"].items()],
        "",
        f"Catalog: `{summary.get('catalog', '')}`",
        "",
        *[f"{title}: `{path}`" for title, path in pictures.items()],
    ]
    return "\n".join(lines)


def publish_build_artifacts(summary: dict, catalog: str, reports_dir: Path) -> dict[str, Path]:
    """Summary (markdown + table), caption-length histogram and sample contact sheet (PNG files and artifacts)."""
    con = connect(catalog)
    try:
        pictures = {
            "Caption-length histogram": caption_length_histogram_png(con, reports_dir / "caption_lengths.png"),
            "Sample contact sheet": sample_contact_sheet_png(con, reports_dir / "contact_sheet.png"),
        }
    finally:
        con.close()
    create_markdown_artifact(build_summary_markdown(summary, pictures), key="webperson-build-summary",
                             description="kept, rejected by reason, stage timings, images/s")
    create_table_artifact([{"stage_reason": k, "count": v} for k, v in summary["rejects"].items()],
                          key="webperson-rejects", description="rejects by stage and reason")
    create_image_artifact(png_data_url(pictures["Caption-length histogram"]), key="webperson-caption-lengths",
                          description="caption length (words) histogram")
    create_image_artifact(png_data_url(pictures["Sample contact sheet"]), key="webperson-contact-sheet",
                          description="sample crops with their first caption")
    return pictures
