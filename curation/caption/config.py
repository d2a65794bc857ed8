"""The captioning stage's one config model, validated at the edge (YAML/JSON → CaptionConfig)."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import prompts

# The top-level prompts/ folder is a data package, so it ships in the wheel and is found from any folder.
DEFAULT_PROMPTS_DIR = Path(prompts.__file__).resolve().parent


class SamplingConfig(BaseModel):
    """Sampling of the caption requests (the filter verdict is always greedy)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(160, ge=8, le=4096)
    # Base seed: each request's seed is derived from it and the sample id, so reruns ask the same question.
    seed: int = 0


class QualityConfig(BaseModel):
    """Checks run on every generated caption; a failing caption rejects its sample (stage "quality")."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    min_words: int = Field(8, ge=1)
    alt_text_min_words: int = Field(3, ge=1)  # alt text is short by nature; it has its own lower bound
    max_words: int = Field(80, ge=1)
    # Share of words that must be common English function words (a, the, with, ...).
    min_english_word_ratio: float = Field(0.08, ge=0.0, le=1.0)
    # Share of letters that may be non-ASCII before a caption counts as another language.
    max_non_ascii_letter_ratio: float = Field(0.05, ge=0.0, le=1.0)
    hedging_words: list[str] = [
        "possibly", "seems", "seem", "seemingly", "appears to", "apparently", "perhaps", "maybe", "might",
        "probably", "likely", "presumably",
    ]
    background_words: list[str] = [
        "background", "in the scene", "scenery", "street", "sidewalk", "building", "road", "sky", "trees",
        "crowd", "behind him", "behind her", "in front of a", "wall",
    ]
    refusal_phrases: list[str] = [
        "i'm sorry", "i am sorry", "i cannot", "i can't", "i can not", "as an ai", "i'm unable", "i am unable",
        "unable to", "i apologize", "cannot help", "can't help", "not able to",
    ]

    @model_validator(mode="after")
    def _check_word_limits(self) -> "QualityConfig":
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")
        return self


class CaptionConfig(BaseModel):
    """Everything the caption stage needs; one instance per run, saved beside the run's outputs."""

    model_config = ConfigDict(extra="forbid")

    # "openai": any OpenAI-compatible server (vllm serve); "transformers": a local VLM directory;
    # "alt-text": no model, the page's cleaned alt text (offline demo and baseline).
    backend: Literal["openai", "transformers", "alt-text"] = "openai"

    # --- openai backend ---
    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8000/v1"], min_length=1)
    # One model, or two with caption_mode "two_models" (caption1 from the first, caption2 from the second).
    models: list[str] = Field(default_factory=lambda: ["Qwen/Qwen2.5-VL-7B-Instruct"], min_length=1, max_length=2)
    filter_model: str | None = None  # default: models[0]
    # Name of the environment variable holding the API key (keys never live in config files).
    api_key_env: str = "GADMS_OPENAI_API_KEY"
    in_flight_per_endpoint: int = Field(64, ge=1, le=4096)
    connect_timeout_s: float = Field(10.0, gt=0)
    request_timeout_s: float = Field(120.0, gt=0)
    retries: int = Field(4, ge=0, le=20)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # Ask /v1/models before the first request, so a wrong model name fails at once with a clear message.
    check_models: bool = True
    # After this many requests in a row failed for transport reasons (after their retries), stop the chunk
    # with an error instead of turning a dead server into rejects; finished requests stay in the cache.
    abort_after_consecutive_failures: int = Field(32, ge=1)
    # "structured_outputs": vLLM >= 0.12 (`structured_outputs: {"json": schema}`); "guided_json": older vLLM;
    # "none": servers without constrained decoding (the verdict is still validated here).
    structured_outputs: Literal["structured_outputs", "guided_json", "none"] = "structured_outputs"
    # /v1/embeddings model for `gadms templates build`; None: the local hashed TF-IDF embedding.
    embedding_model: str | None = None

    # --- transformers backend ---
    transformers_model_dir: str | None = None
    device: str = "cpu"
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    # --- what is asked ---
    filter: bool = True
    caption_mode: Literal["two_templates", "two_samples", "two_models"] = "two_templates"
    image_max_side: int = Field(384, ge=28, le=4096)
    sampling: SamplingConfig = SamplingConfig()
    filter_max_tokens: int = Field(64, ge=8, le=1024)
    # Retries of a request whose answer arrived but was not valid (bad verdict JSON, empty caption).
    invalid_output_retries: int = Field(1, ge=0, le=10)
    quality: QualityConfig = QualityConfig()
    prompt_version: str = "v1"
    prompts_dir: str | None = None  # default: the repository's prompts/
    templates_file: str | None = None  # default: <prompts_dir>/templates.jsonl

    @model_validator(mode="after")
    def _check_backend_settings(self) -> "CaptionConfig":
        if self.caption_mode == "two_models" and len(self.models) != 2:
            raise ValueError(f"caption_mode 'two_models' needs exactly two models, got {len(self.models)}")
        if self.caption_mode != "two_models" and len(self.models) != 1:
            raise ValueError(f"caption_mode {self.caption_mode!r} uses one model, got {len(self.models)}")
        if self.backend == "transformers" and not self.transformers_model_dir:
            raise ValueError("backend 'transformers' needs transformers_model_dir")
        if self.backend == "transformers" and self.caption_mode == "two_models":
            raise ValueError("backend 'transformers' runs one model: use caption_mode two_templates or two_samples")
        for url in self.endpoints:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} is not an http(s) URL")
        return self

    @property
    def verdict_model(self) -> str:
        return self.filter_model or self.models[0]

    @property
    def prompts_path(self) -> Path:
        return Path(self.prompts_dir) if self.prompts_dir else DEFAULT_PROMPTS_DIR

    @property
    def templates_path(self) -> Path:
        return Path(self.templates_file) if self.templates_file else self.prompts_path / "templates.jsonl"
