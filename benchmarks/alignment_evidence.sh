#!/usr/bin/env bash
# The five-seed alignment evidence of benchmarks/README.md ("Alignment evidence over five seeds"): RevDist,
# ReContrast and UniAD unified on EfficientNet-Lite0 with its packaged ImageNet weights (128 px, 300 iterations),
# on the unbalanced real-photo mixture and on the balanced one (Magnetic Tile cut to a demo class's size, drawn
# by the run's seed), seeds 0-4. Per (mixture, method, seed) two runs on one base model:
#   A  the defaults: --align none,cada,cada_sigma,class_aware,cluster (the paper's CADA head; k by silhouette)
#   B  our options, the base reused from A (--checkpoint): --align none,cada,cada_sigma,cluster
#      --cada_pool median --cluster_k calibration
# A finished unit (<unit>.done) is skipped, so the script can be stopped and started again; a unit in progress is
# claimed (<unit>.claim), so two copies started side by side share the list (OMP_NUM_THREADS=1 each on 2 cores).
#   bash benchmarks/alignment_evidence.sh <magnetic_tile folder> <output folder> [seeds ...]   (default: 0 1 2 3 4)
# Then: python benchmarks/seed_table.py <output folder>/unbal_* --summary   (and bal_*)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash benchmarks/alignment_evidence.sh <magnetic_tile folder> <output folder> [seeds ...]"; exit 2
fi
TILE=$1; OUT=$2; shift 2
SEEDS=${*:-0 1 2 3 4}
if [ ! -d "$TILE" ]; then echo "error: $TILE: no such folder (Magnetic Tile in MVTec layout)"; exit 2; fi
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LITE="--backbone efficientnet_lite0 --weights imagenet --image_size 128 --crop_size 0 --device cpu"
declare -A ARGS=([revdist]="--method revdist --iters 300" [recontrast]="--method recontrast --iters 300"
                 [uniad]="--method uniad --iters 300 --batch_size 16")
CLAIM=""
trap 'if [ -n "$CLAIM" ]; then rmdir "$CLAIM"; fi' EXIT
mixture() {  # the mixture folder of $1 (unbal | bal) and seed $2, made once (make_mixture.py is idempotent)
  local folder=$OUT/mixture_unbal
  if [ "$1" = bal ]; then folder=$OUT/mixture_bal_s$2; fi
  if [ "$1" = bal ]; then python benchmarks/make_mixture.py "$TILE" "$folder" --balanced --seed "$2" > /dev/null
  else python benchmarks/make_mixture.py "$TILE" "$folder" > /dev/null; fi
  echo "$folder"
}
for seed in $SEEDS; do  # a whole seed before the next, so a stopped script leaves whole seeds
  for method in revdist recontrast uniad; do
    for mix in unbal bal; do
      unit=$OUT/${mix}_${method}_s$seed
      if [ -e "$unit.done" ] || ! mkdir "$unit.claim" 2> /dev/null; then continue; fi
      CLAIM=$unit.claim
      data=$(mixture $mix "$seed")
      start=$(date +%s); rm -rf "${unit}_A" "${unit}_B"
      python train_mvtec.py ${ARGS[$method]} $LITE --seed "$seed" --data_path "$data" \
        --align none,cada,cada_sigma,class_aware,cluster --out_dir "${unit}_A" > "${unit}_A.log" 2>&1
      mid=$(date +%s)
      python train_mvtec.py ${ARGS[$method]} $LITE --seed "$seed" --data_path "$data" \
        --checkpoint "$(ls -d "${unit}_A"/*/)" --align none,cada,cada_sigma,cluster --cada_pool median \
        --cluster_k calibration --out_dir "${unit}_B" > "${unit}_B.log" 2>&1
      touch "$unit.done"; rmdir "$CLAIM"; CLAIM=""
      echo "$mix $method seed $seed: A $(( mid - start )) s, B $(( $(date +%s) - mid )) s"
    done
  done
done
