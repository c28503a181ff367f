#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one or more hosts) from your workstation, with gcloud:
#   TPU_NAME=my-tpu ZONE=us-central2-b bash launch/tpu_pod.sh STEP... [CONFIG.py[:arg] WORKDIR [--config.k=v ...]]
# STEPs run in the order given:
#   create  create the TPU VM slice (ACCELERATOR_TYPE, RUNTIME_VERSION; SPOT=1 for a spot slice)
#   setup   copy this checkout (git-tracked files as they are now, new files once `git add`ed) to every
#           worker's ~/REMOTE_DIR and run `SETUP_EXTRAS=tpu bash launch/setup.sh` there
#   train   run `python -m vlmjax.train --config CONFIG --workdir WORKDIR ...` on every worker at once;
#           each joins the job by itself (Cloud TPU detection in vlmjax/parallel/distributed.py).
#           WORKDIR must be storage every worker sees (a gcsfuse or NFS mount), a path relative to
#           ~/REMOTE_DIR or absolute; CONFIG is relative to ~/REMOTE_DIR
#   delete  delete the slice
# e.g. `bash launch/tpu_pod.sh create setup train configs/demo/clip_fashion_mnist.py /mnt/runs/clip`.
# Environment: TPU_NAME, ZONE (required); ACCELERATOR_TYPE (v4-16), RUNTIME_VERSION (tpu-ubuntu2204-base),
# PROJECT (gcloud's default project otherwise), REMOTE_DIR (vlmjax), SPOT=1, DETACH=1 (train in the
# background on each worker, output in REMOTE_DIR/train.log, so that closing the ssh session does not
# stop it), DRY_RUN=1 (print every command instead of running it; no network, no gcloud needed).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: TPU_NAME=NAME ZONE=ZONE bash launch/tpu_pod.sh {create|setup|train|delete}..." \
       "[CONFIG.py[:arg] WORKDIR [--config.key=value ...]]" >&2
  exit 2
}

steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    create|setup|train|delete) steps+=("$1"); shift ;;
    *) break ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || usage
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM slice}"
: "${ZONE:?set ZONE, e.g. us-central2-b}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-16}
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-vlmjax}
DRY_RUN=${DRY_RUN:-}
case " ${steps[*]} " in
  *" train "*) [ $# -ge 2 ] || usage ;;
  *) [ $# -eq 0 ] || usage ;;
esac

quote() {
  # Shell-quotes each argument (bash 3.2's printf %q is unreadable, ${x@Q} needs bash 4.4).
  local arg out=""
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s' "${out% }"
}

run() {
  # Runs a command, or with DRY_RUN=1 prints it.
  if [ -n "$DRY_RUN" ]; then
    echo "+ $(quote "$@")"
  else
    "$@"
  fi
}

if [ -z "$DRY_RUN" ] && ! command -v gcloud >/dev/null 2>&1; then
  echo "error: gcloud is not installed (https://cloud.google.com/sdk/docs/install)" >&2
  exit 2
fi
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
[ -z "${PROJECT:-}" ] || where+=(--project="$PROJECT")

# The checkout on every worker: REMOTE_DIR is relative to the home directory unless absolute.
case "$REMOTE_DIR" in
  /*) remote_dir=$(quote "$REMOTE_DIR") ;;
  *) remote_dir="~/$(quote "$REMOTE_DIR")" ;;
esac

step_create() {
  local spot=()
  [ -z "${SPOT:-}" ] || spot=(--spot)
  run "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
}

step_setup() {
  # The working tree of tracked files (`git stash create` snapshots it without touching anything).
  local tarball=/tmp/vlmjax-$TPU_NAME.tar.gz snapshot
  if [ -n "$DRY_RUN" ]; then
    echo "+ git archive --format=tar.gz -o $(quote "$tarball") \$(git stash create || echo HEAD)"
  else
    snapshot=$(git stash create)
    git archive --format=tar.gz -o "$tarball" "${snapshot:-HEAD}"
  fi
  run "${gcloud_tpu[@]}" scp "$tarball" "$TPU_NAME":vlmjax.tar.gz --worker=all "${where[@]}"
  # TPU VM images may ship Python < 3.11 (Ubuntu 22.04: 3.10): install 3.11 from apt there.
  # Unpacked over the previous copy (its .venv and any run directories stay).
  local remote="set -euo pipefail; mkdir -p $remote_dir; tar xzf ~/vlmjax.tar.gz -C $remote_dir; cd $remote_dir"
  remote+="; if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then"
  remote+=" sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv;"
  remote+=" export PYTHON=python3.11; fi"
  remote+="; SETUP_EXTRAS=tpu bash launch/setup.sh"
  run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$remote"
  [ -n "$DRY_RUN" ] || rm -f "$tarball"
}

step_train() {
  # Every worker runs the same command at once; the slice's workers find each other by themselves.
  local remote="set -euo pipefail; cd $remote_dir; source launch/env.sh; "
  local train
  train=".venv/bin/python -m vlmjax.train --config $(quote "$1") --workdir $(quote "$2")"
  shift 2
  [ $# -eq 0 ] || train+=" $(quote "$@")"
  # A run that stopped with a checkpoint (status 75: SIGTERM before maintenance or preemption,
  # train.time_limit_seconds) is started again and resumes, up to VLMJAX_MAX_RESTARTS (100) times.
  local loop="for attempt in \$(seq 0 ${VLMJAX_MAX_RESTARTS:-100}); do status=0; $train || status=\$?;"
  loop+=" [ \$status -eq 75 ] || exit \$status; echo \"status 75 (stopped with a checkpoint): restarting\" >&2;"
  loop+=" done; exit 75"
  if [ -n "${DETACH:-}" ]; then
    # Survives the ssh session: output goes to train.log in the checkout of each worker.
    remote+="nohup bash -c $(quote "$loop") > train.log 2>&1 < /dev/null & echo \"worker \$(hostname): training, log in \$PWD/train.log\""
  else
    remote+="$loop"
  fi
  run "${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="$remote"
}

step_delete() {
  run "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
}

for step in "${steps[@]}"; do
  echo "== $step ($TPU_NAME, $ZONE)" >&2
  case "$step" in
    create) step_create ;;
    setup) step_setup ;;
    train) step_train "$@" ;;
    delete) step_delete ;;
  esac
done
