#!/usr/bin/env bash
# The GPU figures of docs/results.md in one go, on one machine with one CUDA GPU.
#
#   bash scripts/gpu-check.sh OUT_DIR [SECONDS]
#
# Stages run in order of importance, each under its own time limit and all inside
# SECONDS (default 500); a stage that fails or runs out of time is logged and the next
# one starts. Everything lands in OUT_DIR/gpu-check.tar.gz (refreshed after every
# stage) and OUT_DIR/summary.txt. Ray runs without its dashboard (LOOMRAY_DASHBOARD=0)
# and FID uses an Inception network with random weights: the timing is real, the
# scores are not (the weights cannot be downloaded there). SMOKE=1 runs every stage
# on the CPU with a small UNet and few steps, to check the script itself; ONLY=REGEX
# runs only the stages whose names match (a rerun of the ones that failed); with
# WORK=/tmp/gpu-check.XXXX they go on in that earlier call's folder (its runs, its
# logs in the archive).
set -uf  # -f: the [1,2] of an override is never a glob
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [SECONDS]}
budget=${2:-500}
py=${PYTHON:-python3}
work=${WORK:-$(mktemp -d /tmp/gpu-check.XXXX)}  # WORK=: go on in an earlier call's folder
mkdir -p "$work"
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: the archive is written from inside the work folder
export PYTHONUNBUFFERED=1 LOOMRAY_DASHBOARD=0 COLUMNS=150 RAY_USAGE_STATS_ENABLED=0
export LOOMRAY_CACHE=$work/cache LOOMRAY_FID_WEIGHTS=$work/inception-random.pth
t0=$(date +%s)
summary=$out/summary.txt
: > "$summary"

steps=100 warmup=10 train_steps=300 log_every=25 n=4096 gpus=--gpus device=cuda small=()
if [[ ${SMOKE:-0} == 1 ]]; then
  steps=3 warmup=1 train_steps=20 log_every=5 n=64 gpus=--cpu device=cpu
  small=(model.channels=32 "model.channel_mult=[1,2]" train.batch=16 train.cpus_per_worker=1
    coupling.service_cpus=0 data.loader_workers=0 data.limit=256 eval.n=64)
fi
export py work steps warmup train_steps log_every gpus device
export SMALL="${small[*]}"

note() { echo "$*" | tee -a "$summary"; }

# stage NAME LIMIT CMD...: run CMD with its output in NAME.log, at most LIMIT seconds
# and never past the budget; print and keep the end of the log.
stage() {
  local name=$1 limit=$2 left start rc
  shift 2
  [[ $name =~ ${ONLY:-.} ]] || return 0
  left=$((budget - ($(date +%s) - t0)))
  if ((left < 20)); then
    note "=== $name: skipped, ${left}s of the budget left"
    return
  fi
  ((limit > left)) && limit=$left
  note "=== $name (at $(($(date +%s) - t0)) s, limit ${limit} s)"
  start=$(date +%s)
  timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" > "$work/$name.log" 2>&1
  rc=$?
  note "--- $name: rc $rc in $(($(date +%s) - start)) s"
  tail -n 30 "$work/$name.log" | tee -a "$summary"
  # logs, tables, profiles and the runs' metrics only (checkpoints are ~0.4 GB each)
  (cd "$work" && find . -name '*.log' -o -name '*.json' -o -name '*.jsonl' -o -name '*.txt' \
    | grep -v '^./cache/' | tar -czf "$out/gpu-check.tar.gz" -T -)
}

loomray() { "$py" -m loomray "$@"; }
loop() {
  set -f  # a child shell: the [1,2] of an override is never a glob
  # shellcheck disable=SC2086
  loomray bench loop --config cifar10 data.name=synthetic --steps "$steps" --warmup "$warmup" \
    $SMALL "$@"
}
# The real path: `loomray train` through Ray Train (1 GPU worker) and the coupling service,
# on synthetic CIFAR-sized images; metrics every 25 steps, a small FID at the end.
train() {
  set -f  # a child shell: the [1,2] of an override is never a glob
  # shellcheck disable=SC2086
  loomray train --config cifar10 --workers 1 "$gpus" --run-dir "$work/runs/$1" \
    data.name=synthetic data.limit=10000 train.steps="$train_steps" \
    train.log_every="$log_every" train.ckpt_every="$train_steps" eval.n=1000 \
    "eval.methods=[euler-1]" eval.batch=500 $SMALL "${@:2}"
}
# steps/s and the wait share from each run's own metrics: medians over the windows
# after the first (start-up), as `loomray bench train` reads them.
windows() {
  "$py" - "$work/runs" << 'EOF'
import json, pathlib, statistics, sys
rows = {}
for run in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    path = run / "metrics.jsonl"
    if not path.is_file():
        continue
    lines = [json.loads(x) for x in path.read_text().splitlines()][1:]
    ips = statistics.median(x["images_per_s"] for x in lines)
    wait = statistics.median(x["wait_fraction"] for x in lines)
    rows[run.name] = ips
    print(f"{run.name}: {ips:.0f} images/s, wait {100 * wait:.2f}% of step time, "
          f"{len(lines)} windows")
for suffix in ("", "-graph"):
    if {"loom" + suffix, "independent" + suffix} <= rows.keys():
        ratio = rows["loom" + suffix] / rows["independent" + suffix]
        print(f"loom{suffix} / independent{suffix}: {ratio:.3f}")
EOF
}
# Determinism: the same 30 steps (cifar10 UNet, per-rank batch 32) trained in two
# processes, as a restart trains them again; bit-identical weights or the largest
# difference.
repeat() {
  set -f  # a child shell: the [1,2] of an override is never a glob
  local tag=${1:-train.deterministic=true} i
  for i in 1 2; do
    # shellcheck disable=SC2086
    "$py" - "$device" "$work/repeat-$i.pt" "$tag" $SMALL << 'EOF' || return
import sys, torch
from loomray.config import load_config
from loomray.train.loop import train_local
device, out, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
base = ["data.name=synthetic", "data.limit=2048", "data.loader_workers=0", "train.workers=1",
        "train.batch=32", "train.warmup=0"]
cfg = load_config("cifar10", base + overrides)
torch.save(train_local(cfg, device, steps=30).state.model.state_dict(), out)
EOF
  done
  "$py" - "$work/repeat-1.pt" "$work/repeat-2.pt" "$tag" "$device" << 'EOF'
import sys, torch
a, b = (torch.load(path, weights_only=True) for path in sys.argv[1:3])
same = all(torch.equal(a[k], b[k]) for k in a)
gap = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
print(f"{sys.argv[3]}: two 30-step runs in two processes on {sys.argv[4]} "
      f"{'are bit-identical' if same else 'differ'} (largest weight difference {gap:.3g})")
EOF
  rm -f "$work/repeat-1.pt" "$work/repeat-2.pt"
}
# Ray left behind by a stage that ran out of time would hold the GPU's memory.
ray_stop() { "$py" -m ray.scripts.scripts stop --force > /dev/null 2>&1 || true; }
export -f loomray loop train windows repeat

stage env 60 bash -c "nvidia-smi; nproc; free -g; $py -c 'import torch, ray; \
print(torch.__version__, torch.version.cuda, ray.__version__, torch.cuda.is_available() \
and torch.cuda.get_device_name())'"

"$py" - "$LOOMRAY_FID_WEIGHTS" > "$work/inception.log" 2>&1 << 'EOF'
# Inception-v3 of torch-fidelity's architecture with random weights (what the tests use).
import sys, torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3 as F
torch.save({}, sys.argv[1] + ".empty")
load, F.load_state_dict = F.load_state_dict, lambda self, state: None
torch.manual_seed(0)
model = F("inception-v3-compat", ["2048"], feature_extractor_weights_path=sys.argv[1] + ".empty")
F.load_state_dict = load
for m in model.modules():
    if isinstance(m, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
torch.save(model.state_dict(), sys.argv[1])
EOF

# 0. Deterministic kernels (the default) on this GPU: does every kernel of the step
#    have a deterministic version, do two runs agree, and without them?
stage repeat-deterministic 90 repeat
stage repeat-fast 90 repeat train.deterministic=false
# 1. The step at the paper's 4-GPU shape (per-rank batch 32) and at batch 128, eager
#    and with CUDA graphs, each with a profile of 10 more steps; the default kernels
#    are deterministic (train.deterministic), the -fast stages take the fastest ones.
stage loop-b32-eager 90 loop --batch-per-rank 32 --modes independent,loom-overlap \
  --out "$work/loop-b32-eager.json" --profile "$work/profile-b32-eager"
stage loop-b32-graph 200 loop --batch-per-rank 32 --modes independent,loom-overlap \
  train.graph=true --out "$work/loop-b32-graph.json" --profile "$work/profile-b32-graph"
stage loop-b32-graph-fast 150 loop --batch-per-rank 32 --modes independent train.graph=true \
  train.deterministic=false --out "$work/loop-b32-graph-fast.json"
stage loop-b128-graph 200 loop --modes independent,loom-overlap train.graph=true \
  --out "$work/loop-b128-graph.json" --profile "$work/profile-b128-graph"
# 2. The real path with CUDA graphs, LOOM then independent.
stage train-loom-graph 150 train loom-graph coupling.kind=loom train.graph=true
ray_stop
stage train-independent-graph 120 train independent-graph coupling.kind=independent \
  train.graph=true
ray_stop
stage windows-graph 30 windows
# 3. The samplers on the LOOM model.
run=$work/runs/loom-graph
for r in "$work/runs/loom-graph" "$work/runs/loom"; do  # the first with a checkpoint
  if ls "$r/train" 2> /dev/null | grep -q '^step-'; then run=$r && break; fi
done
stage sample 120 loomray bench sample --ckpt "$run" --n "$n" \
  --batch 1024 --methods euler-1,euler-2,midpoint-2,midpoint-4,rk4-8,dopri5 \
  --out "$work/sample.json"
# 4. If time is left: the fastest kernels at 128, graphs run twice, the layout left to
#    the compiler (channels-first weights and inputs), the eager step and the eager
#    real path.
stage loop-b128-graph-fast 150 loop --modes independent train.graph=true \
  train.deterministic=false --out "$work/loop-b128-graph-fast.json"
stage repeat-graph 240 repeat train.graph=true
stage loop-b128-eager-fast 60 loop --modes independent train.deterministic=false \
  --out "$work/loop-b128-eager-fast.json"
stage loop-b128-graph-nchw 200 loop --modes independent train.graph=true \
  train.channels_last=false --out "$work/loop-b128-graph-nchw.json" \
  --profile "$work/profile-b128-graph-nchw"
stage loop-b128-eager 100 loop --modes independent,loom-overlap,independent-fp32 \
  --out "$work/loop-b128-eager.json" --profile "$work/profile-b128-eager"
stage train-loom 150 train loom coupling.kind=loom
ray_stop
stage train-independent 120 train independent coupling.kind=independent
ray_stop
stage windows 30 windows
note "=== done at $(($(date +%s) - t0)) s"
