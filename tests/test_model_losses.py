"""SDM, CLIP, ID and MLM losses against hand computations; SDM and the score store under 2 gloo processes."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gadms_model.losses import clip_loss, id_loss, mlm_loss, sdm_loss
from gadms_model.score_store import ScoreStore

IMAGE = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]]
TEXT = [[0.8, 0.6], [1.0, 1.0], [-1.0, 0.0]]
PIDS = [7, 7, 3]
# The losses are checked in float64 against float64 hand computations: a handful of operations on values of order
# 1/temperature = 50 lose at most a few hundred unit roundoffs (2.2e-14), whatever the CPU or thread count.
REL = 1e-12


def hand_cosines(image, text):
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    image, text = [unit(v) for v in image], [unit(v) for v in text]
    return [[sum(a * b for a, b in zip(row, column)) for column in text] for row in image]


def hand_sdm(image, text, pids, temperature, epsilon=1e-8):
    n = len(pids)
    cos = hand_cosines(image, text)

    def direction(sim):
        total = 0.0
        for i in range(n):
            exps = [math.exp(sim[i][j] / temperature) for j in range(n)]
            same = [1.0 if pids[i] == pids[j] else 0.0 for j in range(n)]
            for j in range(n):
                p = exps[j] / sum(exps)
                q = same[j] / sum(same)
                total += p * (math.log(p) - math.log(q + epsilon))
        return total / n

    transposed = [[cos[j][i] for j in range(n)] for i in range(n)]
    return direction(cos) + direction(transposed)


@pytest.mark.parametrize("temperature", [0.02, 0.5])
def test_sdm_equals_hand_computation(temperature):
    loss = sdm_loss(torch.tensor(IMAGE, dtype=torch.float64), torch.tensor(TEXT, dtype=torch.float64),
                    torch.tensor(PIDS), temperature=temperature)
    assert loss.item() == pytest.approx(hand_sdm(IMAGE, TEXT, PIDS, temperature), rel=REL)


def hand_clip(image, text, pids, temperature):
    n = len(pids)
    cos = hand_cosines(image, text)

    def direction(sim):
        total = 0.0
        for i in range(n):
            log_norm = math.log(sum(math.exp(sim[i][j] / temperature) for j in range(n)))
            same = [j for j in range(n) if pids[i] == pids[j]]
            total += sum(-(sim[i][j] / temperature - log_norm) / len(same) for j in same)
        return total / n

    transposed = [[cos[j][i] for j in range(n)] for i in range(n)]
    return (direction(cos) + direction(transposed)) / 2


@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_clip_loss_equals_hand_computation(temperature):
    loss = clip_loss(torch.tensor(IMAGE, dtype=torch.float64), torch.tensor(TEXT, dtype=torch.float64),
                     torch.tensor(PIDS), temperature=temperature)
    assert loss.item() == pytest.approx(hand_clip(IMAGE, TEXT, PIDS, temperature), rel=REL)


def test_clip_loss_with_unique_pids_is_clips_cross_entropy():
    image, text = torch.tensor(IMAGE, dtype=torch.float64), torch.tensor(TEXT, dtype=torch.float64)
    logits = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t() / 0.07
    labels = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits.t(), labels)) / 2
    assert clip_loss(image, text, torch.tensor([4, 5, 6]), temperature=0.07).item() == pytest.approx(
        expected.item(), rel=REL)


def test_id_loss_equals_hand_computation():
    image_logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, 1.0, 3.0]], dtype=torch.float64)
    text_logits = torch.tensor([[0.0, 0.0, 1.0], [1.0, -1.0, 0.0], [2.0, 2.0, 0.0]], dtype=torch.float64)
    pids = [0, 1, 2]

    def ce(logits):
        return sum(-logits[i][pids[i]] + math.log(sum(math.exp(x) for x in logits[i])) for i in range(3)) / 3

    expected = (ce(image_logits.tolist()) + ce(text_logits.tolist())) / 2
    assert id_loss(image_logits, text_logits, torch.tensor(pids)).item() == pytest.approx(expected, rel=REL)


def test_mlm_loss_averages_over_masked_positions_only():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 1.0, 1.0]],
                           [[0.5, 0.5, 2.0], [1.0, 1.0, 1.0], [0.0, 4.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[1, -100, 0], [-100, -100, 2]])

    def nll(row, target):
        return -row[target] + math.log(sum(math.exp(x) for x in row))

    rows = logits.tolist()
    expected = (nll(rows[0][0], 1) + nll(rows[0][2], 0) + nll(rows[1][2], 2)) / 3
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, rel=REL)
    # The model passes only the masked positions: same value.
    masked = labels != -100
    assert mlm_loss(logits[masked], labels[masked]).item() == pytest.approx(expected, rel=REL)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world, port, image, text, pids, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = image.shape[0] // world
        local = slice(rank * half, (rank + 1) * half)
        local_image = image[local].clone().requires_grad_(True)
        local_text = text[local].clone().requires_grad_(True)
        loss = sdm_loss(local_image, local_text, pids[local])
        loss.backward()
        # The score store: ranks send different numbers of rows; both must end with both updates.
        store = ScoreStore(6, context_length=4)
        ids = torch.tensor([0, 1, 2]) if rank == 0 else torch.tensor([5])
        store.update(ids, torch.full((len(ids), 4), 0.25 * (rank + 1)))
        results[rank] = (loss.item(), local_image.grad, local_text.grad, store.scores.float())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_sdm_across_two_gloo_processes_equals_single_process():
    torch.manual_seed(0)
    image, text = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    pids = torch.tensor([0, 1, 2, 0, 3, 1, 4, 5])  # identities shared across the two ranks' halves
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), image, text, pids, results), nprocs=2, join=True)
        results = dict(results)

    full_image, full_text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    full_loss = sdm_loss(full_image, full_text, pids)
    full_loss.backward()
    for rank in (0, 1):
        loss, image_grad, text_grad, store = results[rank]
        assert loss == pytest.approx(full_loss.item(), rel=REL)
        # Each rank's gradient is the global loss's gradient w.r.t. its own slice.
        torch.testing.assert_close(image_grad, full_image.grad[rank * 4:(rank + 1) * 4], rtol=REL, atol=REL)
        torch.testing.assert_close(text_grad, full_text.grad[rank * 4:(rank + 1) * 4], rtol=REL, atol=REL)
        expected_store = torch.full((6, 4), 0.85).half().float()
        expected_store[[0, 1, 2]] = 0.25
        expected_store[5] = 0.5
        assert torch.equal(store, expected_store)


def _ddp_worker(rank, world, port, results):
    from torch.nn.parallel import DistributedDataParallel

    from gadms_model.model import ModelConfig, build_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks
        model = build_model(ModelConfig.tiny())
        ddp = DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(10 + rank)  # different data per rank
        text_ids = model.tokenizer(["a man in a red coat", "a woman with a bag", "a child in blue"][: 2 + rank])
        images = torch.randn(len(text_ids), 3, 64, 32)
        pids = torch.arange(len(text_ids)) + 10 * rank
        store = ScoreStore(8)
        caption_ids = torch.arange(len(text_ids)) + 4 * rank
        # Equal batch sizes for the gathered SDM; the store update also takes unequal ones (tested above).
        out = ddp(images[:2], text_ids[:2], pids[:2], caption_ids=caption_ids[:2], score_store=store,
                  generator=torch.Generator().manual_seed(rank))
        out["loss"].backward()
        optimizer.step()
        results[rank] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, store.scores.float())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_gadms_step_under_ddp_keeps_ranks_in_sync():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    (state0, store0), (state1, store1) = results[0], results[1]
    assert state0.keys() == state1.keys()
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
    from gadms_model.model import ModelConfig, build_model

    torch.manual_seed(0)
    initial = build_model(ModelConfig.tiny()).state_dict()
    assert not torch.equal(initial["towers.clip.visual.conv1.weight"], state0["towers.clip.visual.conv1.weight"])
    assert torch.equal(store0, store1)
    written = (store0 != torch.tensor(0.85).half().float()).any(dim=1)
    assert written.tolist() == [True, True, False, False, True, True, False, False]
