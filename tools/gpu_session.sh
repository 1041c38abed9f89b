#!/usr/bin/env bash
# One prepared command for a lent GPU machine (CONTRIBUTING, "A GPU run on a lent machine").
#
#   bash tools/gpu_session.sh PART [PART ...]     (carry .gpu-wheels; $OUT is the folder that comes back)
#
# PARTs, run in the order given, each under its own time limit, each copying its results to
# $OUT as soon as they exist:
#   training     the training chapter (and the GPU checkpoint)          330 s
#   experiments  the first-capture check, then the experiments chapter   60 + 400 s
#                (CUDA's own error messages during the check go to $OUT/cuda_errors.log)
#   overhead     where a Triton LayerNorm call spends its host time       90 s
#   sweep        the kernel sweep, written into kernels.TUNED            90 s
#   performance  the performance chapter (after sweep, if both)         150 s
# The environment is checked first (10 s); without the Jupyter wheels nothing else runs (exit 3).
# Before a page runs, its code-cell edits waiting in tools/pending_edits.py are applied to this
# copy, so the page that comes back carries them; a page whose edits do not apply is not run.
set -u
: "${OUT:?set OUT to the folder whose files come back}"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$PWD/.gpu-site" .gpu-wheels/*.whl > /dev/null 2>&1
export PYTHONPATH="$PWD/src:$PWD/.gpu-site" PYTHONUNBUFFERED=1

step() {
    local limit=$1
    shift
    echo "== $(date +%T) $* (limit ${limit} s)"
    timeout "$limit" "$@"
    local rc=$?
    echo "== $(date +%T) exit status $rc"
    return $rc
}

pending() {
    python3 tools/pending_edits.py "$1" || { echo "== $1 not run: its pending edits do not apply"; return 1; }
}

if ! step 60 python3 tools/gpu_env_check.py; then
    echo "the environment is not ready: was .gpu-wheels carried, and is there a CUDA GPU?"
    exit 3
fi
status=0
for part in "$@"; do
    case $part in
        training)
            pending book/training.ipynb || { status=1; continue; }
            step 330 python3 -m resnorm.execute --mode full book/training.ipynb --copy-to "$OUT" || status=1
            cp src/resnorm/checkpoints/numbers_zh_en_gpu.pt "$OUT"/ ;;
        experiments)
            # CUDA (12.9 and later) writes why an API call failed into CUDA_LOG_FILE: the cause
            # of a failed capture (which call, from which thread), where torch only says
            # "operation failed due to a previous error during capture".
            CUDA_LOG_FILE="$OUT/cuda_errors.log" step 60 python3 tools/gpu_calibrate.py --check-capture \
                --out "$OUT/capture.json" \
                || echo "the first CUDA-graph capture of a fresh process was not kept: expect slower runs"
            pending book/experiments.ipynb || { status=1; continue; }
            step 400 python3 -m resnorm.execute --mode full book/experiments.ipynb --copy-to "$OUT" || status=1 ;;
        overhead)
            step 90 python3 tools/ln_overhead.py --out "$OUT/ln_overhead.json" || status=1 ;;
        sweep)
            step 90 python3 tools/kernel_sweep.py --out "$OUT/kernel_sweep.json" \
                --write-kernels src/resnorm/kernels.py || status=1
            cp src/resnorm/kernels.py "$OUT"/ ;;
        performance)
            pending book/performance.ipynb || { status=1; continue; }
            step 150 python3 -m resnorm.execute --mode full book/performance.ipynb --copy-to "$OUT" || status=1 ;;
        *)
            echo "unknown part '$part' (training, experiments, overhead, sweep, performance)"
            exit 2 ;;
    esac
done
exit $status
