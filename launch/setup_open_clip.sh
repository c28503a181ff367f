#!/usr/bin/env bash
# Creates .venv-openclip: the PyTorch reference environment (open_clip 3.3.0, its CoCa, the
# webdataset loader) that parity tests and benches start as a subprocess. It is separate from
# .venv because open_clip needs torchvision, which does not import beside the CPU torch 2.13.0
# wheel there (see ../shared/ENVIRONMENT.md); this set is a CUDA build (~5.8 GB, ~2 min) that
# runs on the CPU. Idempotent. Tests and benches find it at $VLMJAX_OPEN_CLIP_PYTHON or
# .venv-openclip/bin/python.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-openclip
PACKAGES=(torch==2.14.1 torchvision==0.29.1 open-clip-torch==3.3.0 transformers==4.56.2
          numpy==2.4.6 safetensors==0.8.0 webdataset==1.0.2 pillow==13.0.0)
stamp="$VENV/.installed-$(printf '%s ' "${PACKAGES[@]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "installing the open_clip reference environment into $VENV (about 2 minutes, 5.8 GB)..."
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "${PACKAGES[@]}" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  "$VENV/bin/python" -c "import open_clip, torchvision, webdataset" \
    || { echo "error: $VENV does not import open_clip/torchvision/webdataset" >&2; exit 1; }
  touch "$stamp"
fi
