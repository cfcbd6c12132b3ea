#!/usr/bin/env bash
# Runs a batch of d2bench work on a GPU machine in one call and leaves the evidence in $OUT:
#   batch.log      every command with its output and exit code, plus the machine's description
#   pytest.log     the GPU and detectron2 tests (RUN_TESTS=0 skips them)
#   outputs.tgz    outputs/ (every run's result.csv, samples.csv, logs; not the packages: *.pt2
#                  files are hundreds of MB and stay on the machine)
# Usage: [BATCH_SECONDS=N] scripts/device_batch.sh scripts/batches/NAME.txt
#   The batch file holds one shell command per line (usually `python -m runner ...`);
#   blank lines and lines starting with # are skipped. A failing command does not stop the batch.
#   BATCH_SECONDS: every command must end within N s of the batch's start (a GPU call has a hard
#   limit): a command is interrupted (SIGINT, as Ctrl-C: a sweep keeps its finished rows, and
#   running it again resumes) when the time is up, and later commands are skipped, so that
#   outputs.tgz is always written. A command that needs N s can ask first with
#   `scripts/time_left.sh N && ...` (BATCH_DEADLINE, exported here), instead of starting work
#   the time limit would cut off.
# It assumes d2bench's dependencies, detectron2 included, are importable (README: Install).
set -u
batch=${1:?usage: scripts/device_batch.sh BATCH_FILE}
export OUT=${OUT:-/tmp/d2bench-out}   # batch commands may write under $OUT too
mkdir -p "$OUT"
log="$OUT/batch.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "# $(date -u +%FT%TZ) $(hostname) batch=$batch git=${D2BENCH_GIT_SHA:-unknown}"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.sm --format=csv
  python3 -c 'import sys, torch, torchvision; print("python", sys.version.split()[0],
"torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__)'
  python3 -c 'import detectron2; print("detectron2", detectron2.__version__)' \
    || echo "detectron2 NOT importable: runs of detectron2 models will fail"
} 2>&1 | tee "$log"

if [ "${RUN_TESTS:-1}" = 1 ]; then
  start=$(date +%s)
  python3 -m pytest -q -m "gpu or detectron2" -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
  echo "# pytest: rc=${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" | tee -a "$log"
fi

began=$(date +%s)
# when the last command must have ended (20 s kept for the archive): scripts/time_left.sh reads it
[ -n "${BATCH_SECONDS:-}" ] && export BATCH_DEADLINE=$(( began + BATCH_SECONDS - 20 ))
while IFS= read -r command || [ -n "$command" ]; do
  case "$command" in ''|'#'*) continue ;; esac
  start=$(date +%s)
  limit=()
  if [ -n "${BATCH_SECONDS:-}" ]; then
    left=$(( began + BATCH_SECONDS - start - 20 ))   # 20 s kept for the archive below
    if [ "$left" -lt 30 ]; then
      echo "# skipped (only $left s left of BATCH_SECONDS=$BATCH_SECONDS): $command" | tee -a "$log"
      continue
    fi
    limit=(timeout --signal=INT --kill-after=15 "$left")
  fi
  echo "# >>> $command" | tee -a "$log"
  "${limit[@]}" bash -c "$command" 2>&1 | tee -a "$log"
  echo "# <<< rc=${PIPESTATUS[0]} in $(( $(date +%s) - start )) s" | tee -a "$log"
done < "$batch"

[ -d outputs ] && tar czf "$OUT/outputs.tgz" --exclude='*.pt2' outputs
echo "# done $(date -u +%FT%TZ)" | tee -a "$log"
