"""The caption stage: filter verdict and two template-guided captions per person crop.

Backends: "openai" (any OpenAI-compatible server, above all `vllm serve`), "transformers" (a local VLM
directory), "alt-text" (no model: the page's cleaned alt text). See `caption_crops`.
"""
from curation.caption.config import CaptionConfig, QualityConfig, SamplingConfig
from curation.caption.pipeline import caption_crops

__all__ = ["CaptionConfig", "QualityConfig", "SamplingConfig", "caption_crops"]
