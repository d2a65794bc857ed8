"""Torch datasets and the sampler the trainer and evaluator use.

Augmentation of pair i in epoch e is seeded by (seed, e, i) alone, and the sampler's order by (seed, e), so a
run resumed from a checkpoint in the middle of an epoch sees exactly the batches an uninterrupted run would,
whatever the number of DataLoader workers.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator, Protocol

import torch
from torch.utils.data import Dataset, Sampler

from gadms_model.data.sources import Pair, open_image


class PairSource(Protocol):
    num_pairs: int
    num_classes: int

    def blocks(self) -> list[tuple[int, int]]: ...

    def __getitem__(self, pair_index: int) -> Pair: ...


class TrainDataset(Dataset):
    """Pairs of a source as {"image", "caption", "pid", "caption_id"}; caption_id indexes the score store."""

    def __init__(self, source: PairSource, transform: Callable, seed: int):
        self.source = source
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.source.num_pairs

    def __getitem__(self, index: int) -> dict:
        pair = self.source[index]
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (the transforms draw from it; fork_rng restores only it): torch.manual_seed
            # would also reseed every accelerator's generator, at 200 µs a call instead of 2 µs.
            torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**63))
            image = self.transform(pair.image)
        return {"image": image, "caption": pair.caption, "pid": pair.pid, "caption_id": index}


def collate_pairs(items: list[dict]) -> dict:
    return {
        "image": torch.stack([item["image"] for item in items]),
        "caption": [item["caption"] for item in items],
        "pid": torch.tensor([item["pid"] for item in items], dtype=torch.long),
        "caption_id": torch.tensor([item["caption_id"] for item in items], dtype=torch.long),
    }


class BlockShuffleSampler(Sampler[int]):
    """Shuffles blocks (Parquet row groups), then pairs within windows of `window` consecutive blocks, then
    deals the order to ranks. Every rank gets the same number of indices (the order wraps to pad).

    `start` skips the first indices of this rank's epoch order (resuming mid-epoch).
    """

    def __init__(
        self,
        blocks: list[tuple[int, int]],
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        window: int = 8,
    ):
        self.blocks = blocks
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.window = window
        self.total = sum(stop - start for start, stop in blocks)
        self.per_rank = math.ceil(self.total / num_replicas)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_order(self) -> Iterator[int]:
        """This rank's indices of the epoch, one shuffle window at a time (never the whole epoch in memory).

        The epoch's order is the windows' shuffled indices one after another, then its first indices again so
        that every rank gets `per_rank`; rank r takes positions r, r + num_replicas, ...
        """
        generator = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        block_order = torch.randperm(len(self.blocks), generator=generator).tolist()
        padding = self.per_rank * self.num_replicas - self.total
        head: list[int] = []  # the epoch's first `padding` indices (fewer than num_replicas), dealt again at its end
        position = 0  # of this window's first index in the epoch's order
        for first in range(0, len(block_order), self.window):
            window = [i for b in block_order[first : first + self.window] for i in range(*self.blocks[b])]
            shuffled = [window[j] for j in torch.randperm(len(window), generator=generator).tolist()]
            head += shuffled[: padding - len(head)]
            yield from shuffled[(self.rank - position) % self.num_replicas :: self.num_replicas]
            position += len(shuffled)
        yield from head[(self.rank - position) % self.num_replicas :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self.epoch_order(), self.start, None)

    def __len__(self) -> int:
        return self.per_rank - self.start


class ImageFiles(Dataset):
    """Gallery images of an eval split, test-transformed."""

    def __init__(self, paths: list[str], transform: Callable):
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(open_image(self.paths[index], self.paths[index]))
