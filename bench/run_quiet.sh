#!/usr/bin/env bash
# The CPU rows of docs/benchmarks.md (issue 13), for a QUIET machine: start it when the 1-min load
# average is below the core count and nothing else heavy runs. About 7-9 minutes on 2 cores.
#
#   bash bench/run_quiet.sh [output folder]       # default /tmp/mrsr_quiet
#
# bench_sr.py pins both frameworks to the same CPUs with the same thread count, records the load before
# and after each row and prints no ratio for a row measured under a load above the core count
# ("load X > cores N: ratio not reported"): rerun such a row later. Paste the tables into
# docs/benchmarks.md together with the load column.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/mrsr_quiet}
mkdir -p "$out"
read -r load _ < /proc/loadavg
echo "# $(date -u +%FT%TZ) load $load on $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
# 1. The SR train step, 4x, batch 4 at 240² (the issue's row): ours vs PyTorch eager, equal threads.
python bench/bench_sr.py --rows=train --scales=4 --frameworks=jax,torch --iters=3 --warmup=1 \
  --repeats=2 --json="$out/train.jsonl" | tee "$out/train.md"
# 2. Inference at the paper's anchor: one 512² slice at 2x (LR 256²), batch 1.
python bench/bench_sr.py --rows=infer --scales=2 --sizes=512 --frameworks=jax,torch --iters=3 \
  --warmup=1 --repeats=2 --json="$out/infer.jsonl" | tee "$out/infer.md"
# 3. A volume through predict's batching at 2x, 512² out: 16 slices timed (the s per 256-slice
#    volume column scales that pass); PyTorch runs the same batches.
python bench/bench_sr.py --rows=volume --scales=2 --sizes=512 --frameworks=jax,torch \
  --volume_slices=16 --iters=1 --warmup=0 --repeats=1 --json="$out/volume.jsonl" | tee "$out/volume.md"
echo "# done $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
