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
