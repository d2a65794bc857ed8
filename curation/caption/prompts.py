"""Versioned prompt files and the caption template bank (prompts/), and the per-sample template draw.

    prompts/<prompt_version>/caption.txt           caption instruction; {{template}}, {{max_words}}
    prompts/<prompt_version>/filter.txt            keep/reject verdict instruction (JSON answer)
    prompts/<prompt_version>/template_rewrite.txt  human caption → template (for `gadms templates build`)
    prompts/templates.jsonl                        {"id": ..., "text": ...} one template a line
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from storage.errors import GadmsError
from storage.jsonl import read_jsonl

PROMPT_NAMES = ("caption", "filter", "template_rewrite")

PLACEHOLDER_RE = re.compile(r"\[([^\[\]]+)\]")
# The placeholder vocabulary templates may use; `gadms templates validate` rejects anything else.
KNOWN_PLACEHOLDERS = frozenset(
    {
        "He/She", "he/she", "His/Her", "his/her", "him/her", "man/woman", "age group",
        "colored top", "colored bottom", "colored outerwear", "colored dress", "colored shoes",
        "hairstyle", "hair color", "headwear", "accessory", "bag", "action", "body build",
    }
)
MAX_TEMPLATE_WORDS = 70

# Verdict reasons the filter prompt offers; "one_clear_person" is the only one that keeps the crop.
VERDICT_REASONS = (
    "one_clear_person", "several_people", "mannequin", "drawing_or_render", "heavily_occluded", "nsfw",
    "not_a_person", "too_blurry",
)
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"keep": {"type": "boolean"}, "reason": {"type": "string", "enum": list(VERDICT_REASONS)}},
    "required": ["keep", "reason"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Template:
    id: str
    text: str

    @property
    def placeholders(self) -> list[str]:
        return PLACEHOLDER_RE.findall(self.text)


@dataclass(frozen=True)
class PromptSet:
    version: str
    caption: str
    filter: str
    template_rewrite: str

    def caption_prompt(self, template: Template, max_words: int) -> str:
        return self.caption.replace("{{template}}", template.text).replace("{{max_words}}", str(max_words))

    def rewrite_prompt(self, caption: str) -> str:
        return self.template_rewrite.replace("{{caption}}", caption)


def load_prompts(prompts_dir: str | Path, version: str) -> PromptSet:
    folder = Path(prompts_dir) / version
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", version) or not folder.is_dir():
        raise GadmsError(f"prompt_version {version!r}: no prompt folder {folder}")
    texts = {}
    for name in PROMPT_NAMES:
        path = folder / f"{name}.txt"
        try:
            texts[name] = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise GadmsError(f"{path}: cannot read prompt file: {exc.strerror or exc}") from None
    if "{{template}}" not in texts["caption"]:
        raise GadmsError(f"{folder / 'caption.txt'}: missing the {{{{template}}}} slot")
    if "{{caption}}" not in texts["template_rewrite"]:
        raise GadmsError(f"{folder / 'template_rewrite.txt'}: missing the {{{{caption}}}} slot")
    return PromptSet(version=version, **texts)


def template_problems(template: Template) -> list[str]:
    """What is wrong with one template (empty list: fine)."""
    problems = []
    text = template.text
    if not text.strip():
        return ["empty text"]
    if text.count("[") != text.count("]"):
        problems.append("unbalanced brackets")
    names = template.placeholders
    if not names:
        problems.append("no placeholder")
    unknown = sorted({n for n in names if n not in KNOWN_PLACEHOLDERS})
    if unknown:
        problems.append(f"unknown placeholder(s) {', '.join(f'[{n}]' for n in unknown)}")
    if len(text.split()) > MAX_TEMPLATE_WORDS:
        problems.append(f"longer than {MAX_TEMPLATE_WORDS} words")
    return problems


def normalise_text(text: str) -> str:
    """Lower case, words only: what "the same text" means for duplicate templates and template copies."""
    return " ".join(re.findall(r"[a-z0-9/\[\]]+", text.lower()))


def read_templates(path: str | Path) -> list[Template]:
    """Read a template bank without judging it (see `check_templates`)."""
    path = Path(path)
    templates = []
    for number, row in read_jsonl(path):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("text"), str):
            raise GadmsError(f"{path}:{number}: expected an object with string fields 'id' and 'text'")
        templates.append(Template(id=row["id"], text=row["text"].strip()))
    return templates


def check_templates(templates: list[Template]) -> list[str]:
    """Problems of a bank as `<id>: <problem>` lines: bad templates, duplicate ids, duplicate texts."""
    problems = []
    seen_ids: set[str] = set()
    seen_texts: dict[str, str] = {}
    for template in templates:
        problems += [f"{template.id}: {p}" for p in template_problems(template)]
        if template.id in seen_ids:
            problems.append(f"{template.id}: duplicate id")
        seen_ids.add(template.id)
        key = normalise_text(template.text)
        if key in seen_texts:
            problems.append(f"{template.id}: same text as {seen_texts[key]}")
        seen_texts.setdefault(key, template.id)
    return problems


def load_templates(path: str | Path) -> list[Template]:
    """Read and check a bank; any problem is an error (a bad bank would poison every caption)."""
    templates = read_templates(path)
    if not templates:
        raise GadmsError(f"{path}: template bank is empty")
    problems = check_templates(templates)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise GadmsError(f"{path}: template {problems[0]}{more}")
    return templates


def assign_templates(sample_id: str, templates: list[Template], count: int, salt: str = "") -> list[Template]:
    """`count` distinct templates for a sample, drawn from a hash of its id: the same on every rebuild."""
    if count > len(templates):
        raise GadmsError(f"need {count} distinct templates, the bank has {len(templates)}")
    pool = list(templates)
    chosen = []
    for draw in range(count):
        digest = hashlib.sha256(f"{salt}:{sample_id}:{draw}".encode()).digest()
        chosen.append(pool.pop(int.from_bytes(digest[:8], "big") % len(pool)))
    return chosen
