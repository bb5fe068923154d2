#!/usr/bin/env bash
# Train coder-small-ar (the AR twin) and then coder-small (diffusion), adapted from the twin's best
# checkpoint (the recipe measured in docs/models.md), on one GPU: same data, same batch, each with
# the whole device for MINUTES of wall-clock, bf16, validation every minute, best checkpoint kept.
# Then pack both best checkpoints as bf16 safetensors shards (<= 16 MB each) plus one summary.json
# into $OUT, which is what comes back from a device machine.
#
#   scripts/train_gpu.sh               # the GPU run (2 x 3.75 minutes of training)
#   scripts/train_gpu.sh --rehearsal   # the same pipeline on CPU with tiny models, 2 x 1 minute
#
# Environment: PYTHON (default python3; needs torch, tokenizers, safetensors, numpy, typer, rich),
# DATA (dataset folder, default data/code-8k, built if missing: see docs/corpus.md), OUT (default
# runs/gpu-out), WORK (run folders, default runs/gpu-work), MINUTES (training budget per model).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
[[ "${1:-}" == "--rehearsal" ]] && MODE=rehearsal
PYTHON=${PYTHON:-python3}
DATA=${DATA:-data/code-8k}
OUT=${OUT:-runs/gpu-out}
WORK=${WORK:-runs/gpu-work}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
QS="$PYTHON -m quicksilver.cli"

if [[ $MODE == gpu ]]; then
    MINUTES=${MINUTES:-3.75}
    EXTRA=()
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
else
    MINUTES=${MINUTES:-1}
    # Tiny models on CPU, one thread each: the same commands and files as the GPU run, scaled down.
    EXTRA=(--set model.hidden_size=64 --set model.intermediate_size=128 --set model.num_hidden_layers=2
           --set model.num_attention_heads=4 --set model.num_key_value_heads=2 --set train.seq_len=128
           --set train.batch_size=8 --set train.device=cpu --set train.threads=1 --set train.compile=false
           --set train.eval_batches=2 --set train.warmup_steps=10)
    EXTRA+=(--set "train.eval_every_minutes=$(awk "BEGIN{print $MINUTES/4}")")
fi

if [[ ! -f "$DATA/meta.json" ]]; then
    echo "building $DATA (docs/corpus.md; needs the package index unless its sdists are cached)"
    $QS data build --source stdlib --source pypi --out "$DATA"
fi
mkdir -p "$WORK" "$OUT"
rm -rf "$WORK/coder-small" "$WORK/coder-small-ar"

# The recipe (docs/training.md): the twin first, then the diffusion model adapted from the twin's
# best checkpoint.  Each gets the whole device for MINUTES.
status=0
for name in coder-small-ar coder-small; do
    init=()
    [[ $name == coder-small ]] && init=(--set "train.init_from=$WORK/coder-small-ar/best")
    $QS train "configs/$name.toml" --no-progress \
        --set "train.data=$DATA" --set "train.out_dir=$WORK/$name" ${init[@]+"${init[@]}"} \
        --set "train.time_limit_minutes=$MINUTES" ${EXTRA[@]+"${EXTRA[@]}"} > "$WORK/$name.log" 2>&1 || status=1
    [[ $status != 0 ]] && break
done
tail -n 3 "$WORK/coder-small-ar.log" "$WORK/coder-small.log" 2>/dev/null || true
if [[ $status != 0 ]]; then
    echo "a training process failed; logs are in $WORK" >&2
    cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
    exit 1
fi

"$PYTHON" scripts/gpu_run.py pack "$WORK" "$OUT" --data "$DATA"
ls -l "$OUT" "$OUT"/*/
