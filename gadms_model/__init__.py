"""GA-DMS: gradient-attention guided dual masking for text-based person retrieval."""
from storage.env import apply_offline_defaults

apply_offline_defaults()
