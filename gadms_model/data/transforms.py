"""Image transforms of the method (§7): train augmentation and test-time resize + CLIP normalisation."""
from __future__ import annotations

from storage.compat import ensure_torchvision_ops

ensure_torchvision_ops()

from torchvision import transforms as T  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def train_transform(image_size: tuple[int, int] = (384, 128)) -> T.Compose:
    """Resize (H, W), horizontal flip, pad 10 + random crop, CLIP normalisation, random erasing (p 0.5)."""
    return T.Compose(
        [
            T.Resize(image_size),
            T.RandomHorizontalFlip(0.5),
            T.Pad(10),
            T.RandomCrop(image_size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
            T.RandomErasing(p=0.5, scale=(0.02, 0.4), value=CLIP_MEAN),
        ]
    )


def eval_transform(image_size: tuple[int, int] = (384, 128)) -> T.Compose:
    return T.Compose([T.Resize(image_size), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
