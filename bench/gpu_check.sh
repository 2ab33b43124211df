#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call of under 8 minutes:
# the GPU's facts, xpgrad's GPU self-test, the gpu-marked tests, the GPU
# benchmarks and a Fashion-MNIST training run on cuda.
#
#   PYTHONPATH=. bash bench/gpu_check.sh          # from the repository root
#
# Writes into $OUT (default ./gpu-check-out), at most 6 files:
#   gpu_check.log   every step's full output, and the summary
#   tables.md       the benchmarks' markdown tables
#   results.json    the benchmarks' JSON and each step's status and seconds
#   train-fashion/  metrics.jsonl, checkpoint.npz, curves.png of the training run
# The training data is not downloaded (the machine has no network): copy the
# four Fashion-MNIST .gz files to .cache/gpu-data/fashion-mnist (ignored by
# git) and carry that folder along, or point XPGRAD_GPU_DATA at them.
# Each step runs under `timeout`, continues after a failure, and the script
# ends with a pass/fail line per step; it exits 1 if any step failed.

set -u -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="${PYTHONPATH:-.}"
# Benchmarks run with OpenBLAS's own choice of kernel (see bench/README.md).
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE

# The device image has python3 (the one with PyTorch and CuPy) and maybe no `python`.
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

# run NAME LIMIT CMD...: run CMD with at most LIMIT seconds (less if the budget is nearly spent).
run() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if ((left < 15)); then
        echo "== $name: SKIPPED (time budget spent)" | tee -a "$LOG"
        STEPS+=("$name skipped 0 budget")
        return 0
    fi
    ((limit > left - 5)) && limit=$((left - 5))
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    local t0=$SECONDS status
    timeout --kill-after=10 "$limit" "$@" >"$WORK/step.out" 2>&1
    local code=$?
    cat "$WORK/step.out" >>"$LOG"
    cat "$WORK/step.out"
    if ((code == 0)); then status=pass; elif ((code == 124 || code == 137)); then status=timeout; else status=fail; fi
    echo "== $name: $status (exit $code, $((SECONDS - t0)) s)" | tee -a "$LOG"
    STEPS+=("$name $status $((SECONDS - t0)) exit=$code")
}

# bench LABEL MODULE LIMIT [ARGS]: run bench.MODULE, keep its JSON as LABEL.json, and copy its tables into tables.md.
bench() {
    local label=$1 name=$2 limit=$3
    shift 3
    run "$label" "$limit" env -u OUT "$PYTHON" -m "bench.$name" --require-gpu --json "$WORK/$label.json" "$@"
    { printf '## %s: bench.%s %s\n\n' "$label" "$name" "$*"; grep -E '^(\||machine:|data:|target:|note:|no GPU)' "$WORK/step.out"; echo; } >>"$TABLES"
}

run nvidia-smi 20 nvidia-smi
run xpgrad-info 60 "$PYTHON" -m xpgrad.cli info --device cuda
run pytest-gpu 180 env XPGRAD_REQUIRE_GPU=1 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider --durations=10
bench gpu_kernels gpu_kernels 100
bench gpu_epoch gpu_epoch 120 $([ -d "$DATA_DIR" ] && echo --data-dir "$DATA_DIR")
bench tensor_epoch tensor_epoch 90 --device cuda --repeats 5 $([ -d "$DATA_DIR" ] && echo --data-dir "$DATA_DIR")
if [ -d "$DATA_DIR" ]; then
    run train-fashion 90 "$PYTHON" -m xpgrad.cli train --dataset fashion-mnist --device cuda \
        --data-dir "$DATA_DIR" --out "$OUT/train-fashion" --quiet
else
    echo "== train-fashion: SKIPPED (no data at $DATA_DIR; copy /usr/share/datasets/fashion-mnist there and carry it, or set XPGRAD_GPU_DATA)" | tee -a "$LOG"
    STEPS+=("train-fashion skipped 0 no-data")
fi

# One results.json: the benchmarks' JSON and the steps' outcomes.
printf '%s\n' "${STEPS[@]}" >"$WORK/steps.txt"
"$PYTHON" - "$WORK" "$OUT/results.json" <<'EOF' || echo "could not write results.json" | tee -a "$LOG"
import glob, json, os, sys
work, path = sys.argv[1], sys.argv[2]
steps = []
for line in open(os.path.join(work, "steps.txt")):
    name, status, seconds, note = (line.split() + [""] * 4)[:4]
    steps.append({"step": name, "status": status, "seconds": int(seconds), "note": note})
results = {"steps": steps}
for f in sorted(glob.glob(os.path.join(work, "*.json"))):
    with open(f) as fh:
        results[os.path.basename(f)[:-5]] = json.load(fh)
with open(path, "w") as fh:
    json.dump(results, fh, indent=1)
EOF

{
    echo
    echo "== summary ($((SECONDS - START)) s)"
    printf '%s\n' "${STEPS[@]}" | awk '{printf "%-18s %-8s %5s s  %s\n", $1, $2, $3, $4}'
} | tee -a "$LOG"
printf '\n## summary\n\n```\n%s\n```\n' "$(printf '%s\n' "${STEPS[@]}")" >>"$TABLES"
if printf '%s\n' "${STEPS[@]}" | grep -qE ' (fail|timeout) '; then exit 1; fi
exit 0
