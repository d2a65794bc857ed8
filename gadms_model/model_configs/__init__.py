"""open_clip-style JSON model configs shipped with the package (`ModelConfig.clip_model` may name them)."""
