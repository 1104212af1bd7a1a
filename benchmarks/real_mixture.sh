#!/usr/bin/env bash
# The evidence runs of benchmarks/README.md ("Real ImageNet features on the real-photo mixture"): every base on the
# three demo classes + Magnetic Tile, EfficientNet-Lite0 with its packaged ImageNet weights and with random weights,
# seeds 0-2, CPU-sized (128 px, 300 unified iterations, 10 epochs per class). A finished run (its results.csv) is
# skipped, so the script can be stopped and started again; a run in progress is claimed (<run>.claim), so two copies
# started side by side share the list, one run each at a time (OMP_NUM_THREADS=1 each on a 2-core CPU).
#   bash benchmarks/real_mixture.sh <mixture folder> <output folder> [weights ...]   (default: imagenet none)
# The mixture folder: benchmarks/make_mixture.py makes it (Magnetic Tile whole, or with --balanced --seed S cut
# to a demo class's size).
set -euo pipefail
if [ $# -lt 2 ]; then echo "usage: bash benchmarks/real_mixture.sh <mixture folder> <output folder> [weights ...]"; exit 2; fi
MIXTURE=$1; OUT=$2; shift 2
if [ ! -d "$MIXTURE" ]; then echo "error: $MIXTURE: no such folder (how to make the mixture: benchmarks/README.md)"; exit 2; fi
WEIGHTS=${*:-imagenet none}
ALIGN="none,cada,cada_sigma,class_aware,classifier"
COMMON="--data_path $MIXTURE --image_size 128 --crop_size 0 --device cpu"
LITE="--backbone efficientnet_lite0"
CLAIM=""
trap 'if [ -n "$CLAIM" ]; then rmdir "$CLAIM"; fi' EXIT
claim() {  # true when this copy may run $1: not finished, and not claimed by another copy
  if compgen -G "$1/*/results.csv" > /dev/null; then return 1; fi
  mkdir -p "$(dirname "$1")"; mkdir "$1.claim" 2> /dev/null || return 1
  CLAIM=$1.claim; rm -rf "$1"; mkdir -p "$1"
}
release() { rmdir "$CLAIM"; CLAIM=""; }
# Dinomaly: no DINOv2 weights reach an offline machine, so a random-weight ViT-S/14 at 112 px (the demo preset's)
DINOMALY="--method dinomaly --vit small --image_size 112 --crop_size 0 --eval_size 0 --iters 300 --align $ALIGN"
declare -A RUNS=(
  [revdist_unified]="--method revdist --iters 300 --align $ALIGN $LITE $COMMON"
  [recontrast_unified]="--method recontrast --iters 300 --align $ALIGN $LITE $COMMON"
  [uniad_unified]="--method uniad --iters 300 --batch_size 16 --align $ALIGN $LITE $COMMON"
  [noco]="--method noco $LITE $COMMON"
  [revdist_separate]="--method revdist --setting separate --epochs 10 $LITE $COMMON"
  [recontrast_separate]="--method recontrast --setting separate --epochs 10 $LITE $COMMON"
  [dinomaly_unified]="$DINOMALY --data_path $MIXTURE --device cpu"
)
for seed in 0 1 2; do  # a whole seed before the next, so a stopped script leaves whole tables
  for weights in $WEIGHTS; do
    for name in revdist_unified recontrast_unified uniad_unified noco revdist_separate recontrast_separate \
                dinomaly_unified; do
      if [ $name = dinomaly_unified ] && [ $weights != none ]; then continue; fi
      dir=$OUT/${weights}_seed${seed}/$name
      claim "$dir" || continue
      start=$(date +%s)
      status=0
      python train_mvtec.py ${RUNS[$name]} --weights "$weights" --seed "$seed" --out_dir "$dir" \
        > "$dir.log" 2>&1 || status=$?
      if [ $status -ge 128 ]; then echo "interrupted: $dir (started again, the script redoes it)"; exit $status; fi
      if [ $status -ne 0 ]; then echo "FAILED $dir (see $dir.log)"; else
        echo "$weights seed $seed $name: $(( $(date +%s) - start )) s"; fi
      release
    done
  done
done
