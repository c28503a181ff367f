#!/usr/bin/env bash
# Quickstart 1: set up, pre-train the demo CLIP on captioned Fashion-MNIST, evaluate zero-shot.
# Extra arguments are passed on, e.g. `bash launch/demo.sh --config.train.num_steps=300`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
source launch/env.sh
WORKDIR=${WORKDIR:-workdir/demo_clip}
start=$(date +%s)
.venv/bin/python -m vlmjax.train --config configs/demo/clip_fashion_mnist.py --workdir "$WORKDIR" "$@"
echo "train + zero-shot evaluation took $(( $(date +%s) - start )) s; results in $WORKDIR/results.json"
