"""Learning-rate schedule of the recipe: linear warm-up from `start_factor` × lr, then cosine decay to 0."""
from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, start_factor: float) -> float:
    """Multiplier of the base lr after `step` optimiser steps."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
