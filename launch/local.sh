#!/usr/bin/env bash
# Run any config on this machine: bash launch/local.sh CONFIG.py[:arg] WORKDIR [--config.k=v ...]
#
# Multi-process on one machine (to debug multi-host code on a laptop):
#   VLMJAX_PROCESSES=2 bash launch/local.sh CONFIG WORKDIR [--config.k=v ...]
# starts N processes that join through a coordinator on 127.0.0.1 (a free port), waits for all and
# fails (stopping the others) as soon as one fails. Output lines are prefixed with "[process i]".
# Devices: on CPU (the default: JAX_PLATFORMS=cpu) each process gets K virtual CPU devices, K =
# VLMJAX_DEVICES_PER_PROCESS, else the --xla_force_host_platform_device_count of XLA_FLAGS divided
# by N, else 1. With JAX_PLATFORMS=cuda, process i drives GPU i instead.
#
# Restarts: a run that stops cleanly for a restart (a SIGTERM from outside, train.time_limit_seconds)
# writes a checkpoint and exits with status 75; it is started again (up to VLMJAX_MAX_RESTARTS times,
# default 100) and resumes. Ctrl-C or a SIGTERM to this script stops it for good (the run still writes
# its checkpoint; the same command resumes it later).
# VLMJAX_SKIP_SETUP=1 skips `launch/setup.sh` (python -m vlmjax.study sets it for its runs).
set -euo pipefail
cd "$(dirname "$0")/.."
script=$PWD/launch/local.sh

if [ -z "${VLMJAX_LAUNCH_ATTEMPT:-}" ]; then
  attempt=0 max_restarts=${VLMJAX_MAX_RESTARTS:-100} stop=0 child=""
  trap 'stop=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null || true' INT TERM
  while true; do
    VLMJAX_LAUNCH_ATTEMPT=$attempt bash "$script" "$@" &
    child=$!
    status=0
    wait "$child" || status=$?
    while kill -0 "$child" 2>/dev/null; do  # `wait` returns early when a trap runs
      status=0
      wait "$child" || status=$?
    done
    if [ "$status" -ne 75 ] || [ "$stop" -eq 1 ] || [ "$attempt" -ge "$max_restarts" ]; then
      [ "$status" -ne 75 ] || echo "stopped with a checkpoint (status 75): run the same command to resume" >&2
      exit "$status"
    fi
    attempt=$((attempt + 1))
    echo "the run stopped with a checkpoint (status 75): restart $attempt of at most $max_restarts" >&2
  done
fi
[ $# -ge 2 ] || { echo "usage: [VLMJAX_PROCESSES=N] bash launch/local.sh CONFIG.py[:arg] WORKDIR" \
                       "[--config.key=value ...]" >&2; exit 2; }
config=$1 workdir=$2
shift 2
processes=${VLMJAX_PROCESSES:-1}
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || { echo "error: VLMJAX_PROCESSES must be a positive integer," \
                                              "got '$processes'" >&2; exit 2; }
[ -n "${VLMJAX_SKIP_SETUP:-}" ] || bash launch/setup.sh  # a study's runs skip it: set up already
source launch/env.sh
train=(.venv/bin/python -m vlmjax.train --config "$config" --workdir "$workdir" "$@")
if [ "$processes" -eq 1 ]; then
  exec "${train[@]}"
fi

# Devices of each process: split the CPU devices, or one GPU each.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
xla_flags=${XLA_FLAGS:-}
forced=$(sed -n 's/.*--xla_force_host_platform_device_count=\([0-9][0-9]*\).*/\1/p' <<< "$xla_flags")
if [ -n "${VLMJAX_DEVICES_PER_PROCESS:-}" ]; then
  per_process=$VLMJAX_DEVICES_PER_PROCESS
elif [ -n "$forced" ]; then
  (( forced % processes == 0 )) || { echo "error: XLA_FLAGS forces $forced CPU devices, which do not" \
                                          "divide over $processes processes" >&2; exit 2; }
  per_process=$(( forced / processes ))
else
  per_process=1
fi
[[ "$per_process" =~ ^[1-9][0-9]*$ ]] || { echo "error: VLMJAX_DEVICES_PER_PROCESS must be a positive" \
                                               "integer, got '$per_process'" >&2; exit 2; }
xla_flags="$(sed 's/--xla_force_host_platform_device_count=[0-9]*//' <<< "$xla_flags")"
export XLA_FLAGS="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$per_process"

# Process 0 serves the coordinator on a port that is free now.
port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
case "$JAX_PLATFORMS" in
  cpu*) devices="$per_process CPU devices each" ;;
  *) devices="one device each" ;;
esac
echo "starting $processes processes: coordinator 127.0.0.1:$port, JAX_PLATFORMS=$JAX_PLATFORMS, $devices" >&2

pids=()
stop_all() {
  # Stops the processes still running: a failed or interrupted run must not leave peers waiting. In a
  # multi-process run SIGTERM is a preemption notice (all processes checkpoint the same step and exit
  # with status 75), so whatever still runs VLMJAX_STOP_GRACE_SECONDS (60) later gets SIGKILL.
  local pid live deadline=$((SECONDS + ${VLMJAX_STOP_GRACE_SECONDS:-60}))
  for pid in ${pids[@]+"${pids[@]}"}; do
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  done
  while [ "$SECONDS" -lt "$deadline" ]; do
    live=0
    for pid in ${pids[@]+"${pids[@]}"}; do
      [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null || live=1
    done
    [ "$live" -eq 1 ] || return 0
    sleep 1
  done
  for pid in ${pids[@]+"${pids[@]}"}; do
    [ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((i = 0; i < processes; i++)); do
  device_ids=""
  case "$JAX_PLATFORMS" in cuda*|gpu*|rocm*) device_ids=$i ;; esac
  # awk (not sed -u, absent on macOS) prefixes and flushes each line; $! is the Python process.
  VLMJAX_COORDINATOR_ADDRESS=127.0.0.1:$port VLMJAX_NUM_PROCESSES=$processes VLMJAX_PROCESS_ID=$i \
    JAX_LOCAL_DEVICE_IDS=${device_ids:-${JAX_LOCAL_DEVICE_IDS:-}} \
    "${train[@]}" > >(awk -v prefix="[process $i] " '{ print prefix $0; fflush() }') 2>&1 &
  pids+=("$!")
done

# Poll rather than `wait -n` (bash 3.2 on macOS has none): the first failure stops the rest.
running=$processes
while [ "$running" -gt 0 ]; do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    if [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null; then
      continue
    fi
    status=0
    wait "$pid" || status=$?
    pids[i]=""
    running=$((running - 1))
    if [ "$status" -eq 75 ]; then
      echo "process $i stopped with a checkpoint (status 75); waiting for the others" >&2
      exit 75
    elif [ "$status" -ne 0 ]; then
      echo "error: process $i exited with status $status; stopping the others" >&2
      exit "$status"
    fi
  done
  [ "$running" -eq 0 ] || sleep 1
done
echo "all $processes processes finished" >&2
