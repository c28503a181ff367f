#!/usr/bin/env bash
# One prepared GPU run: vlmjax against open_clip on one NVIDIA GPU (bench/gpu_step.py says what
# it measures). Sets up what it needs, then prints the table in under 8 minutes on an H100-class
# GPU:
#   bash bench/gpu.sh            # ViT-B/16 CLIP at batch 256 and the demo CLIP, bf16; B=65,536 loss memory
#   bash bench/gpu.sh --dry_run  # on any machine, CPU only: builds everything, times one tiny step
# Setup: .venv (launch/setup.sh) gets the CUDA plugin of its own jax version (pip's
# "jax[cuda13]==<version>", with the CUDA libraries as wheels); .venv-openclip
# (launch/setup_open_clip.sh) already holds a CUDA build of torch. Offline machines: put the
# wheels in a folder and set VLMJAX_WHEELS=/that/folder. Other options go to bench/gpu_step.py.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
for arg in "$@"; do [ "$arg" = "--dry_run" ] && DRY_RUN=1; done

[ -x .venv/bin/python ] || bash launch/setup.sh
[ -x .venv-openclip/bin/python ] || bash launch/setup_open_clip.sh
source launch/env.sh

if [ "$DRY_RUN" = 0 ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU here (nvidia-smi -L fails); run bash bench/gpu.sh --dry_run to check the script on CPU" >&2
    exit 2
  fi
  nvidia-smi -L
  if ! JAX_PLATFORMS=cuda .venv/bin/python -c "import jax; jax.devices('gpu')" >/dev/null 2>&1; then
    version=$(.venv/bin/python -c "import jax; print(jax.__version__)")
    echo "installing jax[cuda13]==$version into .venv (the CUDA plugin and CUDA wheels, ~2 GB)..."
    if [ -n "${VLMJAX_WHEELS:-}" ]; then
      .venv/bin/python -m pip install -q --no-index --find-links "$VLMJAX_WHEELS" "jax[cuda13]==$version"
    else
      .venv/bin/python -m pip install -q "jax[cuda13]==$version"
    fi
    JAX_PLATFORMS=cuda .venv/bin/python -c "import jax; print('jax sees', jax.devices('gpu'))" \
      || { echo "error: jax still sees no GPU after installing jax[cuda13]==$version" >&2; exit 1; }
  fi
  .venv-openclip/bin/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'" \
    || { echo "error: .venv-openclip's torch sees no GPU (needs a CUDA build: launch/setup_open_clip.sh)" >&2; exit 1; }
fi
exec .venv/bin/python bench/gpu_step.py "$@"
