"""Global exact and near-duplicate removal of person crops (pHash + multi-index hashing, persisted in DuckDB)."""
from curation.dedup.config import DedupConfig
from curation.dedup.index import DedupIndex, in_source_order
from curation.dedup.mih import MultiIndexHash, brute_force_pairs, deduplicate_hashes
from curation.dedup.phash import phash64

__all__ = ["DedupConfig", "DedupIndex", "MultiIndexHash", "brute_force_pairs", "deduplicate_hashes", "in_source_order", "phash64"]
