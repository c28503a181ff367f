#!/usr/bin/env bash
# Run any config on this machine: bash launch/local.sh CONFIG.py[:arg] WORKDIR [--config.k=v ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bash launch/local.sh CONFIG.py[:arg] WORKDIR [--config.key=value ...]" >&2; exit 2; }
config=$1 workdir=$2
shift 2
bash launch/setup.sh
source launch/env.sh
exec .venv/bin/python -m vlmjax.train --config "$config" --workdir "$workdir" "$@"
