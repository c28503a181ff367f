#!/usr/bin/env bash
# Creates .venv, installs vlmjax (+ test extras with SETUP_EXTRAS=test), and obtains Fashion-MNIST.
# Idempotent: re-running skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${SETUP_EXTRAS:-}
DATA_DIR=/usr/share/datasets/fashion-mnist

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: vlmjax needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

pip_install() {
  # This machine's pip config names local wheel folders that may be absent: hide those warnings.
  .venv/bin/python -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

stamp=".venv/.vlmjax-installed-$(cat pyproject.toml launch/setup.sh | sha1sum | cut -c1-12)-${EXTRAS:-base}"
if [ ! -f "$stamp" ]; then
  echo "installing vlmjax${EXTRAS:+[$EXTRAS]} into .venv (about a minute)..."
  pip_install --upgrade pip
  pip_install -e ".${EXTRAS:+[$EXTRAS]}"
  if [ "$EXTRAS" = "test" ]; then
    # open_clip's tokenizer and BPE vocabulary are the parity reference; without --no-deps
    # it would pull torchvision and a multi-GB CUDA torch.
    pip_install --no-deps open-clip-torch==3.3.0
  fi
  touch "$stamp"
fi

TCMALLOC_LIB=/usr/lib/$(uname -m)-linux-gnu/libtcmalloc_minimal.so.4
if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ] || [ ! -f "$TCMALLOC_LIB" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "installing Debian's dataset-fashion-mnist and libtcmalloc-minimal4..."
    $sudo_cmd apt-get update -qq >/dev/null || true
    $sudo_cmd apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist with apt-get" >&2
    $sudo_cmd apt-get install -y -qq libtcmalloc-minimal4 >/dev/null \
      || echo "warning: libtcmalloc-minimal4 not installed; training runs slower" >&2
  fi
  if [ ! -f "$DATA_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "warning: Fashion-MNIST is not in $DATA_DIR (no apt-get, or it failed). Download the four files" \
         "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz into a directory and pass" \
         "--config.data.dir=THAT_DIR." >&2
  fi
fi
