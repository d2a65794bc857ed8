import torch

from gadms_model.compat import nms_reference


def _random_boxes(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.rand(n, 2, generator=generator) * 200
    wh = torch.rand(n, 2, generator=generator) * 60 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=generator)


def test_torch_is_the_cpu_build():
    assert torch.version.cuda is None


def test_torchvision_nms_runs_on_cpu_and_equals_ultralytics_nms():
    import torchvision
    from ultralytics.utils.nms import TorchNMS

    generator = torch.Generator().manual_seed(0)
    for n in (0, 1, 2, 17, 300, 2000):
        for iou in (0.3, 0.5, 0.7):
            boxes, scores = _random_boxes(generator, n)
            expected = TorchNMS.nms(boxes, scores, iou)
            assert torch.equal(torchvision.ops.nms(boxes, scores, iou), expected)
            assert torch.equal(nms_reference(boxes, scores, iou), expected)


def test_nms_worked_example():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) suppresses its exact copy 0 and the overlapping box 1 (IoU 81/119 = 0.68 > 0.5).
    assert nms_reference(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms_reference(boxes, scores, 0.7).tolist() == [3, 1, 2]


def test_open_clip_and_ultralytics_import():
    import open_clip
    from ultralytics import YOLO

    assert "ViT-B-16" in open_clip.list_models()
    assert YOLO is not None


def test_concurrent_first_calls_define_the_ops_once():
    # A fresh interpreter: in this one the ops exist already. Threads as the build flow's chunk runner has them.
    import subprocess
    import sys

    code = (
        "import threading\n"
        "from gadms_model.compat import ensure_torchvision_ops\n"
        "barrier, results = threading.Barrier(8), []\n"
        "def call():\n"
        "    barrier.wait()\n"
        "    results.append(ensure_torchvision_ops())\n"
        "threads = [threading.Thread(target=call) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "import torch, torchvision\n"
        "boxes = torch.tensor([[0., 0., 2., 2.], [0., 0., 2., 2.1]])\n"
        "print(sorted(results), torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[False, False, False, False, False, False, False, True] [0]"
