"""Settings of the dedup step."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from storage.takedown import NEAR_DUPLICATE_RADIUS


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # A crop within this many differing pHash bits (of 64) of a kept crop is a near duplicate.
    radius: int = Field(NEAR_DUPLICATE_RADIUS, ge=0, le=16)
