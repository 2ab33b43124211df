#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call of under 8 minutes: the
# GPU's facts, xpgrad's GPU self-test, the benchmarks that summary.json is read
# from (the epoch against PyTorch and JAX, the end-to-end Fashion-MNIST training
# next to PyTorch, the kernel benchmark), the gpu-marked tests, and then, as
# time allows, the scaling grid and a training loop of one's own.
#
#   PYTHONPATH=. XPGRAD_COMMIT=$(git rev-parse HEAD) bash bench/gpu_check.sh   # from the repository root
#   GPU_CHECK_DRY_RUN=1 OUT=/tmp/dry bash bench/gpu_check.sh                   # the same logic without a GPU
#
# Writes into $OUT (default ./gpu-check-out):
#   gpu_check.log   every step's full output, and the summary
#   tables.md       a heading for every step (its status, or why it was skipped)
#                   and the benchmarks' markdown tables under their own headings
#   results.json    the benchmarks' JSON, each step's status and seconds, the plan
#   summary.json    the figures the targets are read from (issue 10's schema;
#                   null with a note for anything not measured)
#   train-fashion/  metrics.jsonl, checkpoint.npz, curves.png of the timed training run
# The training data is not downloaded (the machine has no network): copy the
# four Fashion-MNIST .gz files to .cache/gpu-data/fashion-mnist (ignored by
# git) and carry that folder along, or point XPGRAD_GPU_DATA at them.
# XPGRAD_COMMIT names the commit in summary.json when the copy has no .git.
#
# Each step runs under `timeout`, continues after a failure, and the script ends
# with a pass/fail line per step; it exits 1 if any step failed. The steps' time
# limits add up to less than the budget (GPU_CHECK_BUDGET, 450 s of the caller's
# 480), and a step starts only while the budget has time left (it is cut to what
# is left, and skipped under 25 s): so a run that goes slow loses the last steps,
# which is why the steps summary.json needs come first. Steps that take --budget
# get their time limit minus 10 s, so they cut their own work short (and say so)
# before `timeout` kills them; torch.compile's warm-up is bounded inside that.
# GPU_CHECK_SKIP="scaling tensor_epoch" skips the steps it names.
#
# GPU_CHECK_DRY_RUN=1, on a machine without a GPU, runs every step's real command
# line: each GPU step takes its no-GPU path at once (its arguments are parsed on
# the way) and is recorded as skipped with the reason it printed; anything else
# that fails is a failure. The tables, results.json and summary.json (all nulls,
# each explained) are written as on a GPU, in a few seconds.

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
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
SKIP=" ${GPU_CHECK_SKIP:-} "
MARGIN=15                         # seconds a step leaves to the ones after it, and to the summary
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
TABLES="$OUT/tables.md"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"

START=$SECONDS
STEPS=()
PLAN=()
PLANNING=0
PLANNED=0
STATUS=""
LIMIT=0

# skip NAME REASON [SECONDS]: record NAME as skipped, with why.
skip() {
    STATUS="skipped ($2)"
    echo "== $1: SKIPPED ($2)" | tee -a "$LOG"
    STEPS+=("$1 skipped ${3:-0} $2")
}

# The line a step printed that says it has no GPU to run on (dry run only).
no_gpu_line() {
    grep -m1 -E 'no GPU|no usable GPU|NVIDIA driver|NVIDIA-SMI has failed|failed to run command' "$WORK/step.out" \
        | cut -c1-200
}

# run NAME LIMIT CMD...: run CMD with at most LIMIT seconds (less if the budget is nearly spent);
# an argument @BUDGET@ becomes that limit minus 10. Sets STATUS and LIMIT; the output is in $WORK/step.out.
run() {
    local name=$1 limit=$2
    shift 2
    : >"$WORK/step.out"  # a skipped step leaves no output behind for the next heading
    if ((PLANNING)); then
        PLAN+=("$name")
        PLANNED=$((PLANNED + limit))
        return 0
    fi
    local left=$((BUDGET - (SECONDS - START)))
    LIMIT=0
    if [[ $SKIP == *" $name "* ]]; then
        skip "$name" "named in GPU_CHECK_SKIP"
        return 0
    fi
    if ((left < 25)); then
        skip "$name" "time budget spent, ${left} s of ${BUDGET} s left"
        return 0
    fi
    ((limit > left - MARGIN)) && limit=$((left - MARGIN))
    LIMIT=$limit
    local args=() a
    for a in "$@"; do args+=("${a//@BUDGET@/$((limit - 10))}"); done
    echo "== $name (limit ${limit}s): ${args[*]}" | tee -a "$LOG"
    local t0=$SECONDS code why
    timeout --kill-after=10 "$limit" "${args[@]}" >"$WORK/step.out" 2>&1
    code=$?
    cat "$WORK/step.out" >>"$LOG"
    cat "$WORK/step.out"
    if ((DRY_RUN && code != 0)) && why=$(no_gpu_line) && [ -n "$why" ]; then
        skip "$name" "dry run: $why" $((SECONDS - t0))
        return 0
    fi
    if ((code == 0)); then STATUS=pass; elif ((code == 124 || code == 137)); then STATUS=timeout; else STATUS=fail; fi
    STATUS="$STATUS (exit $code, $((SECONDS - t0)) s)"
    echo "== $name: $STATUS" | tee -a "$LOG"
    STEPS+=("$name ${STATUS%% *} $((SECONDS - t0)) exit=$code")
}

# heading NAME WHAT: the step's heading in tables.md, with its status and what it runs.
heading() {
    ((PLANNING)) && return 0
    printf '## %s: %s\n\n`%s`\n\n' "$1" "$STATUS" "${2//@BUDGET@/$((LIMIT - 10))}" >>"$TABLES"
}

# step NAME LIMIT CMD...: run CMD, and its heading in tables.md.
step() {
    run "$@"
    heading "$1" "${*:3}"
}

# bench LABEL LIMIT MODULE [ARGS]: run bench.MODULE, keep its JSON as LABEL.json, and copy its tables into
# tables.md under its heading (nothing when it did not run).
bench() {
    local label=$1 limit=$2 name=$3
    shift 3
    run "$label" "$limit" env -u OUT "$PYTHON" -m "bench.$name" --require-gpu --json "$WORK/$label.json" "$@"
    heading "$label" "bench.$name${*:+ $*}"
    if ((!PLANNING)) && [[ $STATUS != skipped* ]]; then
        { grep -E '^(\||machine:|data:|target:|note:|no GPU)' "$WORK/step.out"; echo; } >>"$TABLES"
    fi
}

DATA=()
[ -d "$DATA_DIR" ] && DATA=(--data-dir "$DATA_DIR")

# The steps, in the order summary.json needs them: gpu_epoch (epoch_ms, step_us, kernels_per_step,
# graph_vs_eager_max_rel_param_diff), e2e (e2e_seconds, e2e_test_accuracy), gpu_kernels
# (row_kernels_copy_share_min); then the tests, then what no target reads.
steps() {
    step nvidia-smi 10 nvidia-smi
    step xpgrad-info 20 "$PYTHON" -m xpgrad.cli info --device cuda
    bench gpu_epoch 130 gpu_epoch --budget @BUDGET@ --compile-limit 60 ${DATA[@]+"${DATA[@]}"}
    if [ -d "$DATA_DIR" ] || ((PLANNING)); then
        # The timed xpgrad run is the training run of this check: its folder is $OUT/train-fashion.
        bench e2e 70 e2e --budget @BUDGET@ --data-dir "$DATA_DIR" --out "$OUT/train-fashion"
    else
        skip e2e "no data at $DATA_DIR; copy /usr/share/datasets/fashion-mnist there and carry it, or set XPGRAD_GPU_DATA"
        heading e2e "bench.e2e"
    fi
    bench gpu_kernels 45 gpu_kernels
    # --maxfail: a run where everything fails (a kernel that does not build) ends early and leaves the time.
    step pytest-gpu 95 env XPGRAD_REQUIRE_GPU=1 "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider \
        --maxfail=10 --durations=10
    bench scaling 40 scaling --budget @BUDGET@ --compile-limit 15 ${DATA[@]+"${DATA[@]}"}
    # A training loop of one's own (Tensors, nn, optim) against the Trainer's epoch and PyTorch eager.
    bench tensor_epoch 25 tensor_epoch --device cuda --repeats 3 ${DATA[@]+"${DATA[@]}"}
}

PLANNING=1
steps
PLANNING=0
MODE=$( ((DRY_RUN)) && echo "dry run, no GPU needed" || echo "GPU run")
printf '# GPU check, %s (%s)\n\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$MODE" >"$TABLES"
PLAN_LINE="plan: ${#PLAN[@]} steps (${PLAN[*]}), limits adding up to ${PLANNED} s of the ${BUDGET} s budget"
((PLANNED + MARGIN > BUDGET)) && PLAN_LINE+="; OVER BUDGET: the last steps will be cut"
echo "== $PLAN_LINE" | tee -a "$LOG"
printf '%s\n\n' "$PLAN_LINE" >>"$TABLES"
printf '{"budget": %s, "limits": %s, "margin": %s, "dry_run": %s, "order": [%s]}\n' "$BUDGET" "$PLANNED" \
    "$MARGIN" "$( ((DRY_RUN)) && echo true || echo false)" "$(printf '"%s",' "${PLAN[@]}" | sed 's/,$//')" \
    >"$WORK/plan.json"

steps

# results.json (everything) and summary.json (the targets' figures), from the steps' JSON.
printf '%s\n' "${STEPS[@]}" >"$WORK/steps.txt"
"$PYTHON" -m bench.summary --work "$WORK" --results "$OUT/results.json" --summary "$OUT/summary.json" 2>&1 | tee -a "$LOG" \
    || STEPS+=("summary fail 0 schema")

{
    echo
    echo "== summary ($((SECONDS - START)) s, $MODE)"
    printf '%s\n' "${STEPS[@]}" | awk '{printf "%-18s %-8s %5s s  ", $1, $2, $3; $1 = $2 = $3 = ""; sub(/^ +/, ""); print}'
} | tee -a "$LOG"
printf '\n## summary\n\n```\n%s\n```\n' "$(printf '%s\n' "${STEPS[@]}")" >>"$TABLES"
if printf '%s\n' "${STEPS[@]}" | grep -qE '^[^ ]+ (fail|timeout) '; then exit 1; fi
exit 0
