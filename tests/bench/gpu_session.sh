#!/usr/bin/env bash
# The GPU checks of issue 14 in one run on a lent GPU machine (the device tool), each with its
# own time limit so that one that hangs leaves time to the others:
#
#   here:   make gpu-kit            (once: .gpu-kit/site.tar.xz, the packages the machine lacks)
#   device: run(command="bash tests/bench/gpu_session.sh", carry=[".gpu-kit"], timeout_s=540)
#
# The whole run stays under GPU_SESSION_SECONDS (default 480 s: with the machine's start, a
# rerun of one step still fits in the session's 15 minutes); GPU_SESSION_STEPS names the steps
# to run (default "gpu_bench train scoring nnunet"); GPU_SESSION_SMOKE=1 runs them at toy sizes
# on any device (tests/inference/test_pmpd_gpu_bench_smoke.py). Order: the GPU benchmark, the
# short training (make bench-gpu), the end-to-end scoring (bench_scoring.py), then nnU-Net
# prediction (bench_nnunet.py) with what time is left. Everything it prints goes to
# $OUT/gpu_session.log too; the figures the benchmarks write in this run
# (tests/bench/results/*.json) are copied to $OUT, and gpu_bench.py writes $OUT/gpu_bench.json.
# Everything runs on synthetic phantoms.
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
BUDGET=${GPU_SESSION_SECONDS:-480}
STARTED=$(date +%s)
MARK=$(mktemp)
exec > >(tee -a "$OUT/gpu_session.log") 2>&1
TEE=$!

PY=${PYTHON:-python3}
KIT=${GPU_SESSION_KIT:-.gpu-kit/site.tar.xz}
SITE=${GPU_SESSION_SITE:-/tmp/site}
STEPS=" ${GPU_SESSION_STEPS:-gpu_bench train scoring nnunet} "
if [ -f "$KIT" ]; then
    "$PY" tests/bench/gpu_kit.py unpack "$KIT" "$SITE"
    export PYTHONPATH=$SITE:$PWD
else
    echo "no $KIT: run 'make gpu-kit' here and carry .gpu-kit (the checks need its packages)"
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "unpacked in $(($(date +%s) - STARTED)) s; $(nproc) CPU cores"
"$PY" tests/bench/gpu_kit.py check || { echo "packages missing: no check run"; exit 3; }

# step NAME SECONDS COMMAND...: runs the command for at most SECONDS, or what is left of the
# budget (less a margin to copy the results), and says how it ended.
step() {
    local name=$1 limit=$2
    shift 2
    case "$STEPS" in *" $name "*) ;; *) return ;; esac
    local left=$((BUDGET - ($(date +%s) - STARTED) - 10))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, ${left} s left of the ${BUDGET} s budget"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit} s): $*"
    local begun=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    local status=$?
    echo "== $name: exit status ${status} after $(($(date +%s) - begun)) s"
}

if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then
    # The same steps at toy sizes on any device: checks this script and the kit (here, on a
    # CPU, with the kit's packages beside a Python 3.12 with the machine's PyTorch).
    step gpu_bench 120 "$PY" tests/bench/gpu_bench.py --smoke --no-compile
    step train 150 "$PY" tests/bench/bench_train_cpu.py --device auto --patients 10 --size 64 \
        --input-size 32 --epochs 1 --angles 2 --skip-shuffled
    step scoring 150 "$PY" tests/bench/bench_scoring.py --layout gpu-host --cpu-workers 1 \
        --patients 8 --depth 10 --input-size 32 --timeout 120
    step nnunet 300 "$PY" tests/bench/bench_nnunet.py --size 64 --slices 24 --train 5 \
        --train-size 64 --held-out 1
else
    step gpu_bench 100 "$PY" tests/bench/gpu_bench.py --budget-s 70
    step train 140 "$PY" tests/bench/bench_train_cpu.py --device cuda --depth 50 \
        --input-size 224 --epochs 4 --skip-shuffled
    step scoring 200 "$PY" tests/bench/bench_scoring.py --layout gpu-host --timeout 120
    step nnunet 200 "$PY" tests/bench/bench_nnunet.py --device cuda
fi

find tests/bench/results -type f -newer "$MARK" -exec cp {} "$OUT"/ \;
echo "session: $(($(date +%s) - STARTED)) s"
# The log is complete in $OUT before the tool collects it: tee ends once its input closes.
exec >&- 2>&-
wait "$TEE"
