#!/usr/bin/env bash
# The checks that need a CUDA GPU, runnable as one command on a fresh GPU machine (the
# device tool's boxes: torch preinstalled, no network). Builds ckptlab in place, then runs
# the named stages in order and packs what they wrote, each stage's log and stages.txt (exit
# status and seconds per stage) into $OUT/gpu-checks.tgz (the device tool returns at most 8
# files), again after every stage: a run cut short still returns what finished. A failed
# stage does not stop the next one; the script then exits 1.
#
#   bash benchmarks/gpu_checks.sh tests validate-torchsave trace modes seed2048
#
# stages (rough wall time on an H100):
#   tests              pytest -m gpu (tests/core/test_gpu.py: pinned D2H, deferred and gpu snapshots;
#                      tests/core/test_load_gpu.py, tests/core/test_distributed.py and
#                      tests/profiling/test_trace_gpu.py: pinned batched loads, multi-rank loads onto the GPU, h2d)
#   validate-torchsave the seeds' validation, --checkpointer torchsave, seed-1024 fp32 and bf16
#   validate-pccheck   the same with pccheck (default sync: D2H straight into staging), fp32 and bf16
#   validate-deferred  the same with pccheck --snapshot deferred (fp32)
#   trace              seed-1024 fp32, 40 steps, checkpoint every 10, --snapshot deferred, traced;
#                      prints how much of d2h overlaps the training step, draws timelines (PNG)
#                      of the whole run and of the checkpoint at step 20, and the writer stragglers
#   modes              ckptlab bench on seed-1024 (none, torchsave, dcp-async, pccheck sync/deferred/gpu/auto; docs/PERFORMANCE.md)
#   seed2048           ckptlab bench on seed-2048 fp32 and bf16 (none, pccheck sync/deferred/gpu; 12.85 GB checkpoints)
#   seedfull           ckptlab bench on seed-full fp32 (48.25 GB): pccheck-auto (gpu on an H200, deferred on an
#                      H100), 8 steps, one checkpoint at step 6 (a 64 GiB disk holds one 48 GB checkpoint, not
#                      the two that retention briefly keeps): its stall is a first stall (staging registered,
#                      GPU buffer allocated), its durable and cold load are the figures that count
#   affinity           seed-1024, 30 steps, checkpoint every 10, 4 writers unpinned vs --writer-cpus on the
#                      last 4 CPUs; writer stragglers and migrations of each (ckptlab trace threads)
#   affinity-matrix    ckptlab experiment affinity: 1,2,4,8 writers x unpinned/compact/spread/disjoint,
#                      5 runs each of 512 MiB checkpoints beside 8 spinning load processes
#
# GPU_CHECKS_SMOKE=1 runs the same command lines on the CPU with the tiny preset and small
# sizes (tests/training/test_gpu_checks_script.py): device time is short and rare, so a wrong flag or
# module path must fail here, not there. Its figures mean nothing.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
RES=$(mktemp -d)
PY=${PYTHON:-python3}
log() { echo "== $(date +%T) $*"; }
STAGES="tests validate-torchsave validate-pccheck validate-deferred trace modes seed2048 seedfull affinity affinity-matrix"
for stage in "$@"; do  # every name checked before anything runs
  case " $STAGES " in *" $stage "*) ;; *) echo "unknown stage $stage (stages: $STAGES)" >&2; exit 2 ;; esac
done

if [ "${GPU_CHECKS_SMOKE:-0}" = 1 ]; then
  DEV=cpu P1024=tiny P2048=tiny PFULL=tiny MATRIX_MB=8 MATRIX_THREADS=1,2 MATRIX_REPEATS=1 LOAD_PROCS=1 GPUKIND=
else
  DEV=cuda P1024=seed-1024 P2048=seed-2048 PFULL=seed-full MATRIX_MB=512 MATRIX_THREADS=1,2,4,8 MATRIX_REPEATS=5 LOAD_PROCS=8
  GPUKIND=,pccheck-gpu  # the kind that needs a GPU
fi
# validate KIND DTYPE NAME [-- FLAGS]: the seeds' validation on seed-1024 (kill, resume, compare
# losses bit for bit); its checkpoints are removed, its losses, plot and summary kept
validate() {
  local kind=$1 dt=$2 name=$3; shift 3
  $PY -m ckptlab.training.validate --checkpointer "$kind" --preset $P1024 --model-dtype "$dt" \
    --device $DEV --steps 24 --freq 8 --kill-after 8 --out "$RES/validate-$name" "$@" 2>&1 | tail -15
  rm -rf "$RES/validate-$name"/ckpt-*
}

if ! $PY -c "import ckptlab._engine" 2>/dev/null; then
  log "building ckptlab"
  $PY -m pip install -q --no-build-isolation --no-deps -e . >"$RES/build.log" 2>&1 || { tail -40 "$RES/build.log"; exit 1; }
fi
if [ "$DEV" = cuda ]; then
  $PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
  # h100 / h200 / ... for result file names
  GPU=$($PY -c "import re, torch; m = re.search(r'[A-Z]+\d{2,3}', torch.cuda.get_device_name()); print(m.group().lower() if m else 'gpu')")
else
  GPU=smoke
fi

run_stage() {
  local stage=$1
  case "$stage" in
    tests)
      $PY -m pytest -m gpu tests/core/test_gpu.py tests/core/test_load_gpu.py tests/core/test_distributed.py tests/profiling/test_trace_gpu.py -q -p no:cacheprovider -o addopts="" 2>&1 | tee "$RES/tests.log" ;;
    validate-torchsave) for dt in fp32 bf16; do validate torchsave $dt "torchsave-$dt"; done ;;
    validate-pccheck) for dt in fp32 bf16; do validate pccheck $dt "pccheck-$dt"; done ;;
    validate-deferred) validate pccheck fp32 deferred-fp32 -- --snapshot deferred ;;
    trace)
      d=$(mktemp -d)
      $PY -m training.train_pccheck --preset $P1024 --device $DEV --training-steps 40 --checkpoint-freq 10 \
        --snapshot deferred --ckpt-dir "$d" --trace "$RES/trace-deferred.arrow" --summary-json "$RES/trace-summary.json" \
        --no-progress 2>&1 | tail -12
      rm -rf "$d"
      $PY - "$RES/trace-deferred.arrow" <<'EOF' | tee "$RES/trace-overlap.txt"
import json, sys
from ckptlab.analysis import overlap, read_trace
t = read_trace(sys.argv[1])
out = {k: overlap(t, a, b) for k, a, b in [("d2h~train_step", "d2h", "train_step"),
                                            ("d2h~forward+backward(host)", "d2h", {"forward", "backward"}),
                                            ("write+checksum+fsync~train_step", {"write", "checksum", "fsync"}, "train_step")]}
print(json.dumps(out, indent=1))
EOF
      $PY -m ckptlab.analysis.cli trace plot "$RES/trace-deferred.arrow" -o "$RES/timeline-deferred-step20.png" --step 20
      $PY -m ckptlab.analysis.cli trace plot "$RES/trace-deferred.arrow" -o "$RES/timeline-deferred.png"
      $PY -m ckptlab.analysis.cli trace threads "$RES/trace-deferred.arrow" | tee "$RES/trace-threads.txt"
      ;;
    modes)  # the D2H overlap comes from the `trace` stage's deferred trace
      $PY -m ckptlab.core.cli bench --preset $P1024 --device $DEV --steps 40 --every 10 --repeats 1 \
        --kinds none,torchsave,dcp-async,pccheck-sync,pccheck-deferred${GPUKIND},pccheck-auto --no-progress \
        --out "$RES/bench_${GPU}_seed-1024" ;;
    seed2048)
      for dt in fp32 bf16; do
        $PY -m ckptlab.core.cli bench --preset $P2048 --model-dtype $dt --device $DEV --steps 30 --every 10 \
          --repeats 1 --kinds none,pccheck-sync,pccheck-deferred${GPUKIND} --no-progress --out "$RES/bench_${GPU}_seed-2048_$dt"
      done ;;
    seedfull)
      $PY -m ckptlab.core.cli bench --preset $PFULL --model-dtype fp32 --device $DEV --steps 8 --every 6 \
        --repeats 1 --kinds none,pccheck-auto --no-progress --out "$RES/bench_${GPU}_seed-full" ;;
    affinity)
      last4=$($PY -c "import os; c = sorted(os.sched_getaffinity(0)); print(f'{c[-min(4, len(c))]}-{c[-1]}')")
      for placement in unpinned "$last4"; do
        d=$(mktemp -d)
        pin=(); [ "$placement" = unpinned ] || pin=(--writer-cpus "$placement")
        $PY -m training.train_pccheck --preset $P1024 --device $DEV --training-steps 30 --checkpoint-freq 10 \
          --writer-threads 4 "${pin[@]}" --ckpt-dir "$d" --trace "$RES/trace-writers-${placement}.arrow" \
          --no-progress 2>&1 | tail -6
        rm -rf "$d"
        $PY -m ckptlab.analysis.cli trace threads "$RES/trace-writers-${placement}.arrow" \
          --plot "$RES/writers-${placement}.png" | tee "$RES/threads-${placement}.txt"
      done ;;
    affinity-matrix)
      d=$(mktemp -d)
      $PY -m ckptlab.core.cli experiment affinity --dir "$d" --out "$RES/affinity-matrix-$GPU" --threads $MATRIX_THREADS \
        --repeats $MATRIX_REPEATS --saves 3 --size-mb $MATRIX_MB --load-procs $LOAD_PROCS 2>&1 | tail -25
      rm -rf "$d" ;;
  esac
}

# Results are packed after every stage and on any exit, so a run cut short by the device
# tool's time limit still brings back the stages that finished; a failed stage is logged and
# the next one runs (device time is too rare to stop at the first failure).
pack() { tar -C "$RES" -czf "$OUT/gpu-checks.tgz" . 2>/dev/null || true; }
trap pack EXIT
failed=()
for stage in "$@"; do
  log "stage $stage"
  t0=$SECONDS
  set +e
  ( set -e; run_stage "$stage" ) 2>&1 | tee "$RES/stage-$stage.log"
  rc=${PIPESTATUS[0]}
  set -e
  echo "$stage rc=$rc $((SECONDS - t0))s" >>"$RES/stages.txt"
  [ "$rc" -eq 0 ] || { failed+=("$stage"); log "stage $stage FAILED (exit $rc)"; }
  pack
done
log "packed $(du -h "$OUT/gpu-checks.tgz" | cut -f1) into $OUT/gpu-checks.tgz; stages: $(tr '\n' ' ' <"$RES/stages.txt")"
[ ${#failed[@]} -eq 0 ] || { log "FAILED: ${failed[*]}"; exit 1; }
