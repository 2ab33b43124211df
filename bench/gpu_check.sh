#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call of under 8 minutes:
# the GPU's facts, xpgrad's GPU self-test, the gpu-marked tests, the kernel
# benchmark, the epoch against PyTorch and JAX, the end-to-end Fashion-MNIST
# training next to PyTorch, and the scaling grid.
#
#   PYTHONPATH=. XPGRAD_COMMIT=$(git rev-parse HEAD) bash bench/gpu_check.sh   # from the repository root
#
# Writes into $OUT (default ./gpu-check-out):
#   gpu_check.log   every step's full output, and the summary
#   tables.md       the benchmarks' markdown tables
#   results.json    the benchmarks' JSON and each step's status and seconds
#   summary.json    the figures the targets are read from (issue 10's schema;
#                   null with a note for anything not measured)
#   train-fashion/  metrics.jsonl, checkpoint.npz, curves.png of the timed training run
# The training data is not downloaded (the machine has no network): copy the
# four Fashion-MNIST .gz files to .cache/gpu-data/fashion-mnist (ignored by
# git) and carry that folder along, or point XPGRAD_GPU_DATA at them.
# XPGRAD_COMMIT names the commit in summary.json when the copy has no .git.
# Each step runs under `timeout`, continues after a failure, and the script
# ends with a pass/fail line per step; it exits 1 if any step failed.
# Steps that take --budget get their time limit minus 10 s, so they cut their
# own work short (and say so) before `timeout` kills them; torch.compile's
# warm-up is bounded inside that.

set -u -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:-.}"
# Benchmarks run with OpenBLAS's own choice of kernel (see bench/README.md).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE

# The device image has python3 (the one with PyTorch, JAX and CuPy) and maybe no `python`.
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
OUT=${OUT:-gpu-check-out}
DATA_DIR=${XPGRAD_GPU_DATA:-.cache/gpu-data/fashion-mnist}
BUDGET=${GPU_CHECK_BUDGET:-450}   # seconds for all steps; the caller's limit is 480
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
TABLES="$OUT/tables.md"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"
printf '# GPU check, %s\n\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$TABLES"

START=$SECONDS
STEPS=()

# run NAME LIMIT CMD...: run CMD with at most LIMIT seconds (less if the budget is nearly spent);
# an argument @BUDGET@ becomes that limit minus 10.
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 25)); then
        echo "== $name: SKIPPED (time budget spent)" | tee -a "$LOG"
        STEPS+=("$name skipped 0 budget")
        return 0
    fi
    ((limit > left - 15)) && limit=$((left - 15))
    local args=() a
    for a in "$@"; do args+=("${a//@BUDGET@/$((limit - 10))}"); done
    echo "== $name (limit ${limit}s): ${args[*]}" | tee -a "$LOG"
    local t0=$SECONDS status
    timeout --kill-after=10 "$limit" "${args[@]}" >"$WORK/step.out" 2>&1
    local code=$?
    cat "$WORK/step.out" >>"$LOG"
    cat "$WORK/step.out"
    if ((code == 0)); then status=pass; elif ((code == 124 || code == 137)); then status=timeout; else status=fail; fi
    echo "== $name: $status (exit $code, $((SECONDS - t0)) s)" | tee -a "$LOG"
    STEPS+=("$name $status $((SECONDS - t0)) exit=$code")
}

# bench LABEL LIMIT MODULE [ARGS]: run bench.MODULE, keep its JSON as LABEL.json, and copy its tables into tables.md.
bench() {
    local label=$1 limit=$2 name=$3
    shift 3
    run "$label" "$limit" env -u OUT "$PYTHON" -m "bench.$name" --require-gpu --json "$WORK/$label.json" "$@"
    { printf '## %s: bench.%s %s\n\n' "$label" "$name" "$*"; grep -E '^(\||machine:|data:|target:|note:|no GPU)' "$WORK/step.out"; echo; } >>"$TABLES"
}

DATA=()
[ -d "$DATA_DIR" ] && DATA=(--data-dir "$DATA_DIR")

run nvidia-smi 20 nvidia-smi
run xpgrad-info 60 "$PYTHON" -m xpgrad.cli info --device cuda
run pytest-gpu 150 env XPGRAD_REQUIRE_GPU=1 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider --durations=10
bench gpu_kernels 60 gpu_kernels
bench gpu_epoch 150 gpu_epoch --budget @BUDGET@ --compile-limit 75 ${DATA[@]+"${DATA[@]}"}
if [ -d "$DATA_DIR" ]; then
    # The timed xpgrad run is the training run of this check: its folder is $OUT/train-fashion.
    bench e2e 90 e2e --budget @BUDGET@ --data-dir "$DATA_DIR" --out "$OUT/train-fashion"
else
    echo "== e2e: SKIPPED (no data at $DATA_DIR; copy /usr/share/datasets/fashion-mnist there and carry it, or set XPGRAD_GPU_DATA)" | tee -a "$LOG"
    STEPS+=("e2e skipped 0 no-data")
fi
bench scaling 150 scaling --budget @BUDGET@ --compile-limit 40 ${DATA[@]+"${DATA[@]}"}
# The cnn's epoch (issue 17): xpgrad eager and graph against PyTorch eager with cuDNN, then the wider cnn.
bench cnn_epoch 60 cnn_epoch --device cuda --repeats 3 ${DATA[@]+"${DATA[@]}"}
bench cnn_wide 60 cnn_epoch --device cuda --repeats 3 --channels 32,64 ${DATA[@]+"${DATA[@]}"}
# A training loop of one's own (Tensors, nn, optim) against the Trainer's epoch and PyTorch eager: last, as the least urgent.
bench tensor_epoch 45 tensor_epoch --device cuda --repeats 3 ${DATA[@]+"${DATA[@]}"}

# results.json (everything) and summary.json (the targets' figures), from the steps' JSON.
printf '%s\n' "${STEPS[@]}" >"$WORK/steps.txt"
"$PYTHON" -m bench.summary --work "$WORK" --results "$OUT/results.json" --summary "$OUT/summary.json" 2>&1 | tee -a "$LOG" \
    || STEPS+=("summary fail 0 schema")

{
    echo
    echo "== summary ($((SECONDS - START)) s)"
    printf '%s\n' "${STEPS[@]}" | awk '{printf "%-18s %-8s %5s s  %s\n", $1, $2, $3, $4}'
} | tee -a "$LOG"
printf '\n## summary\n\n```\n%s\n```\n' "$(printf '%s\n' "${STEPS[@]}")" >>"$TABLES"
if printf '%s\n' "${STEPS[@]}" | grep -qE ' (fail|timeout) '; then exit 1; fi
exit 0
