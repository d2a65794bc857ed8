"""WebPerson curation stages as plain Python (no Prefect): crawl, detect/pose/dedup, caption, synthetic web."""
from storage.env import apply_offline_defaults

apply_offline_defaults()
