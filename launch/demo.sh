#!/usr/bin/env bash
# Quickstart 1: set up, pre-train a demo model on captioned Fashion-MNIST, evaluate it.
# DEMO=clip (default), DEMO=coca (contrastive + captioning; also captions and caption-likelihood
# zero-shot), DEMO=filip (token-wise late interaction, token-wise zero-shot and retrieval) or
# DEMO=clip_resnet (the CLIP with a ResNet image tower: CLIP's ModifiedResNet with BatchNorm) or
# DEMO=dense (CLIP + a local patch-to-phrase objective on Fashion-MNIST scenes of 1-4 items:
# image-level zero-shot, zero-shot segmentation and region classification, PNG overlays).
# Extra arguments are passed on, e.g. `bash launch/demo.sh --config.train.num_steps=300`.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=${DEMO:-clip}
case "$DEMO" in
  clip|coca|filip|clip_resnet|dense) ;;
  *) echo "error: DEMO=$DEMO; use DEMO=clip, DEMO=coca, DEMO=filip, DEMO=clip_resnet or DEMO=dense" >&2
     exit 2 ;;
esac
bash launch/setup.sh
source launch/env.sh
WORKDIR=${WORKDIR:-workdir/demo_$DEMO}
EXTRA=()
if [ "$DEMO" = dense ]; then  # a few predictions as PNGs: image | truth | prediction
  EXTRA=(--config.evals.dense.overlays=4 "--config.evals.dense.overlay_dir=$WORKDIR/overlays")
fi
start=$(date +%s)
.venv/bin/python -m vlmjax.train --config "configs/demo/${DEMO}_fashion_mnist.py" --workdir "$WORKDIR" \
  "${EXTRA[@]}" "$@"
echo "train + evaluation took $(( $(date +%s) - start )) s; results in $WORKDIR/results.json"
