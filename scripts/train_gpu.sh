#!/usr/bin/env bash
# Train coder-small (diffusion) and coder-small-ar (its AR twin) side by side on one GPU: two
# processes, same data, same batch, same wall-clock budget, bf16, validation every minute, best
# checkpoint kept. Then pack both best checkpoints as bf16 safetensors shards (<= 16 MB each)
# plus one summary.json into $OUT, which is what comes back from a device machine.
#
#   scripts/train_gpu.sh               # the GPU run (about 8 minutes in all)
#   scripts/train_gpu.sh --rehearsal   # the same pipeline on CPU with tiny models, 2-minute budget
#
# Environment: PYTHON (default python3; needs torch, tokenizers, safetensors, numpy, typer, rich),
# DATA (dataset folder, default data/stdlib-8k, built if missing), OUT (default runs/gpu-out),
# WORK (run folders, default runs/gpu-work), MINUTES (training budget per model).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
[[ "${1:-}" == "--rehearsal" ]] && MODE=rehearsal
PYTHON=${PYTHON:-python3}
DATA=${DATA:-data/stdlib-8k}
OUT=${OUT:-runs/gpu-out}
WORK=${WORK:-runs/gpu-work}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
QS="$PYTHON -m quicksilver.cli"

if [[ $MODE == gpu ]]; then
    MINUTES=${MINUTES:-7.5}
    EXTRA=()
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
else
    MINUTES=${MINUTES:-2}
    # Tiny models on CPU, one thread each: the same commands and files as the GPU run, scaled down.
    EXTRA=(--set model.hidden_size=64 --set model.intermediate_size=128 --set model.num_hidden_layers=2
           --set model.num_attention_heads=4 --set model.num_key_value_heads=2 --set train.seq_len=128
           --set train.batch_size=8 --set train.device=cpu --set train.threads=1 --set train.compile=false
           --set train.eval_batches=2 --set train.warmup_steps=10)
    EXTRA+=(--set "train.eval_every_minutes=$(awk "BEGIN{print $MINUTES/4}")")
fi

if [[ ! -f "$DATA/meta.json" ]]; then
    echo "building $DATA from this Python's standard library"
    $QS data build --out "$DATA"
fi
mkdir -p "$WORK" "$OUT"
rm -rf "$WORK/coder-small" "$WORK/coder-small-ar"

pids=()
for name in coder-small coder-small-ar; do
    $QS train "configs/$name.toml" --no-progress \
        --set "train.data=$DATA" --set "train.out_dir=$WORK/$name" \
        --set "train.time_limit_minutes=$MINUTES" ${EXTRA[@]+"${EXTRA[@]}"} > "$WORK/$name.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$WORK/coder-small.log" "$WORK/coder-small-ar.log"
if [[ $status != 0 ]]; then
    echo "a training process failed; logs are in $WORK" >&2
    cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
    exit 1
fi

"$PYTHON" scripts/gpu_run.py pack "$WORK" "$OUT" --data "$DATA"
ls -l "$OUT" "$OUT"/*/
