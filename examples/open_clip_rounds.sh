#!/usr/bin/env bash
# SCAN dynamic pruning with open_clip's own trainer, unchanged: one `python -m open_clip_train.main`
# call per round (= epoch), `curate losses` after the rounds whose losses curate needs.
# See examples/open_clip_train_recipe.md for the why and the knobs.
#
#   RUN=runs/cc3m MODEL=ViT-B-32 ROUNDS=32 KNOBS="--warmup-rounds 2" \
#   EXTRA="--lr 1e-3 --wd 0.1 --precision amp --batch-size 256 --workers 8" \
#   bash examples/open_clip_rounds.sh
#
# The run must be embedded first (curate embed SHARDS --run $RUN), so curate knows the pool.
set -euo pipefail

RUN=${RUN:?set RUN to an embedded curate run folder}
MODEL=${MODEL:-ViT-B-32}           # open_clip model name (or local-dir:PATH)
ROUNDS=${ROUNDS:-32}
NAME=${NAME:-scan}                 # open_clip_train experiment name
LOGS=${LOGS:-./logs}
KNOBS=${KNOBS:-}                   # curate bootstrap knobs for round 0, e.g. "--warmup-rounds 2 --seed 0"
EXTRA=${EXTRA:-}                   # extra open_clip_train arguments
DATA_MODE=${DATA_MODE:-reshard}    # reshard: sample-exact (curate reshard); urls: whole shards only
RESHARD=${RESHARD:-${RUN%/}-reshard}  # DATA_MODE=reshard: the rounds' shards go here (never inside the run)
PYTHON=${PYTHON:-python}
CURATE=${CURATE:-curate}
TRAIN=${TRAIN:-$PYTHON -m open_clip_train.main}
LOSS_ARGS=${LOSS_ARGS:-}           # e.g. "--device cuda --batch-size 512"

for ((N = 0; N < ROUNDS; N++)); do
  R=$(printf %04d "$N")
  ARGS=()
  if ((N == 0)); then read -r -a ARGS <<< "$KNOBS"; fi

  # 1. decide the round: manifest of the samples to train on
  if [[ $DATA_MODE == urls ]]; then
    mapfile -t SHARDS < <($CURATE bootstrap --run "$RUN" --round "$N" "${ARGS[@]}" --print urls)
  else
    MANIFEST=$($CURATE bootstrap --run "$RUN" --round "$N" "${ARGS[@]}")
    OUT="$RESHARD/round-$R"
    $CURATE reshard --manifest "$MANIFEST" --out "$OUT"
    mapfile -t SHARDS < <(ls "$OUT"/*.tar)
  fi
  HEADER="$RUN/manifests/round-$R.json"
  KEPT=$($PYTHON -c 'import json,sys; print(json.load(open(sys.argv[1]))["counts"]["kept"])' "$HEADER")
  NEED_LOSSES=$($PYTHON -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["bootstrap"]["record_losses"]))' "$HEADER")
  DATA=$(printf '%s::' "${SHARDS[@]}"); DATA=${DATA%::}   # open_clip_train joins sources with '::'

  # 2. one epoch with open_clip's trainer; --resume latest continues the same model and optimizer
  # shellcheck disable=SC2086
  $TRAIN --model "$MODEL" --dataset-type webdataset --train-data "$DATA" --train-num-samples "$KEPT" \
    --epochs $((N + 1)) --resume latest --save-most-recent --logs "$LOGS" --name "$NAME" --report-to '' $EXTRA

  # 3. per-sample losses of the checkpoint over this round's manifest, when the next round needs them
  if [[ $NEED_LOSSES == 1 ]]; then
    # shellcheck disable=SC2086
    $CURATE losses --run "$RUN" --round "$N" --checkpoint "$LOGS/$NAME/checkpoints/epoch_$((N + 1)).pt" \
      --model "$MODEL" --force $LOSS_ARGS > /dev/null
  fi
done
