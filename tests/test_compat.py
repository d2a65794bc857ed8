import torch

from storage.compat import nms_reference


def _random_boxes(generator: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.rand(n, 2, generator=generator) * 200
    wh = torch.rand(n, 2, generator=generator) * 60 + 1
    return torch.cat([xy, xy + wh], dim=1), torch.rand(n, generator=generator)


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


def _run_fresh(code: str) -> str:
    """Run `code` in a fresh interpreter (in this one torchvision is imported already) and return its stdout."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


# What CPU torch does to torchvision's CUDA build, on any host: its compiled library fails to load.
WITHOUT_COMPILED_OPS = (
    "import torch\n"
    "def _fails(path):\n"
    "    raise OSError(f'{path}: undefined symbol (simulated CUDA build on CPU torch)')\n"
    "torch.ops.load_library = _fails\n"
)


def test_without_compiled_ops_the_shim_defines_nms_equal_to_ultralytics():
    code = WITHOUT_COMPILED_OPS + (
        "from storage.compat import ensure_torchvision_ops\n"
        "installed = ensure_torchvision_ops()\n"
        "import torchvision\n"
        "from ultralytics.utils.nms import TorchNMS\n"
        "generator = torch.Generator().manual_seed(0)\n"
        "equal = []\n"
        "for n in (0, 1, 17, 300):\n"
        "    xy = torch.rand(n, 2, generator=generator) * 200\n"
        "    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * 60 + 1], dim=1)\n"
        "    scores = torch.rand(n, generator=generator)\n"
        "    equal.append(torch.equal(torchvision.ops.nms(boxes, scores, 0.5), TorchNMS.nms(boxes, scores, 0.5)))\n"
        "print(installed, equal, ensure_torchvision_ops())\n"
    )
    assert _run_fresh(code) == "True [True, True, True, True] False"


def test_with_compiled_ops_present_the_shim_changes_nothing():
    # The schema already defined, as torchvision's loaded library defines it; a sentinel kernel shows whose runs.
    code = (
        "import torch\n"
        "library = torch.library.Library('torchvision', 'DEF')\n"
        "library.define('nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')\n"
        "library.impl('nms', lambda dets, scores, iou: torch.tensor([-7]), 'CPU')\n"
        "from storage.compat import ensure_torchvision_ops\n"
        "boxes = torch.tensor([[0., 0., 2., 2.]])\n"
        "print(ensure_torchvision_ops(), torch.ops.torchvision.nms(boxes, torch.tensor([0.9]), 0.5).tolist())\n"
    )
    assert _run_fresh(code) == "False [-7]"


def test_after_torchvision_is_imported_the_shim_does_nothing():
    import torchvision  # noqa: F401  (imported here already, with or without the shim)

    from storage.compat import ensure_torchvision_ops

    assert ensure_torchvision_ops() is False


def test_concurrent_first_calls_define_the_ops_once():
    # Threads as the build flow's chunk runner has them.
    code = WITHOUT_COMPILED_OPS + (
        "import threading\n"
        "from storage.compat import ensure_torchvision_ops\n"
        "barrier, results = threading.Barrier(8), []\n"
        "def call():\n"
        "    barrier.wait()\n"
        "    results.append(ensure_torchvision_ops())\n"
        "threads = [threading.Thread(target=call) for _ in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "import torchvision\n"
        "boxes = torch.tensor([[0., 0., 2., 2.], [0., 0., 2., 2.1]])\n"
        "print(sorted(results), torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist())\n"
    )
    assert _run_fresh(code) == "[False, False, False, False, False, False, False, True] [0]"
