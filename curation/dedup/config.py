"""Settings of the dedup step."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # A crop within this many differing pHash bits (of 64) of a kept crop is a near duplicate.
    radius: int = Field(6, ge=0, le=16)
