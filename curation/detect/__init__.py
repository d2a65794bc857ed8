"""Detection stage: decode each download once, find persons (YOLO or HOG), apply the paper's box and pose
rules, and cut one JPEG crop per kept person. Dedup of the crops is `curation.dedup`."""
from curation.detect.config import DetectConfig
from curation.detect.pipeline import PersonDetector, detect_persons

__all__ = ["DetectConfig", "PersonDetector", "detect_persons"]
