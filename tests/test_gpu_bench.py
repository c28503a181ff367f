"""bench/gpu.sh runs first time on a GPU machine: its --dry_run builds every part on the CPU
(both rows on both frameworks, the contrastive-memory children) and times one tiny step."""

import json
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPEN_CLIP_PYTHON = os.path.join(REPO, ".venv-openclip", "bin", "python")

pytestmark = pytest.mark.skipif(not os.path.exists(OPEN_CLIP_PYTHON),
                                reason="needs .venv-openclip (bash launch/setup_open_clip.sh)")


def test_dry_run_builds_both_sides_of_every_row_and_measures_the_loss_memory():
    out = subprocess.run(["bash", "bench/gpu.sh", "--dry_run"], cwd=REPO, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dry_run"] and result["device"] == "cpu"
    assert set(result["rows"]) == {"vit_b16_clip", "demo_clip"}
    for name, row in result["rows"].items():
        assert row["vlmjax_s"] > 0 and row["open_clip_s"] > 0, name
        # The same architecture on both sides: open_clip differs by its class token under
        # average pooling and the patch-embedding bias (tens of parameters at these sizes).
        assert abs(row["params"] - row["open_clip_params"]) < 0.01 * row["params"], name
        assert row["flops"] > 0
    for implementation in ("chunked", "dense"):
        memory = result["contrastive"][implementation]
        assert memory["fits"] and memory["seconds"] > 0, memory
    assert "vit_b16_clip" in out.stdout and "contrastive loss + gradient, B = 512" in out.stdout


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_the_real_run_says_so_in_one_line():
    out = subprocess.run(["bash", "bench/gpu.sh"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: no NVIDIA GPU here")
