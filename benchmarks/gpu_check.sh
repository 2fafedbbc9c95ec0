#!/usr/bin/env bash
# Every GPU figure of issues 6 and 8 in one run, for a session lent a device machine for a few
# minutes. It installs nothing (the device image has torch, typer, rich, h5py) and stays under
# about 8 minutes (11.5 at the limits); each measurement has its own time limit, so one slow compile cannot eat the rest.
#
#     bash benchmarks/gpu_check.sh            # results also go to $OUT (or /tmp/gpu_check)
#
# Rows: train_speed.py for the paper config (N_v 64, ~24 tokens, 500-d, batch 128) in bf16 and
# tf32, with and without torch.compile (default mode, and reduce-overhead = CUDA graphs), N_v 128,
# then ground_speed.py on the GPU.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__)"
speed() {  # LIMIT ARGS...
  local limit=$1; shift
  echo "== train_speed $*"
  timeout "$limit" python3 benchmarks/train_speed.py --device cuda --json "$@" 2>&1 | tail -1
}
{
  speed 60 --precision bf16
  speed 60 --precision tf32
  speed 60 --precision bf16 --set data.clips=128
  speed 60 --precision bf16 --batch-size 256
  speed 120 --precision bf16 --compile
  speed 120 --precision bf16 --compile --compile-mode reduce-overhead
  speed 120 --precision bf16 --compile --set data.clips=128
} | tee "$OUT/train_speed.log"
echo "== ground_speed (cuda)"
timeout 90 python3 benchmarks/ground_speed.py --device cuda --repeats 3 2>&1 | tee "$OUT/ground_speed.log"
