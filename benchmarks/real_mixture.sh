#!/usr/bin/env bash
# The evidence runs of benchmarks/README.md ("Real ImageNet features on the real-photo mixture"): every base on the
# three demo classes + Magnetic Tile, EfficientNet-Lite0 with its packaged ImageNet weights and with random weights,
# seeds 0-2, CPU-sized (128 px, 300 unified iterations, 10 epochs per class). A finished run (its results.csv) is
# skipped, so the script can be stopped and started again.
#   bash benchmarks/real_mixture.sh <mixture folder> <output folder> [weights ...]   (default: imagenet none)
set -euo pipefail
MIXTURE=$1; OUT=$2; shift 2
WEIGHTS=${*:-imagenet none}
ALIGN="none,cada,cada_sigma,class_aware,classifier"
COMMON="--data_path $MIXTURE --image_size 128 --crop_size 0 --device cpu"
LITE="--backbone efficientnet_lite0"
declare -A RUNS=(
  [noco]="--method noco $LITE"
  [revdist_separate]="--method revdist --setting separate --epochs 10 $LITE"
  [recontrast_separate]="--method recontrast --setting separate --epochs 10 $LITE"
  [revdist_unified]="--method revdist --iters 300 --align $ALIGN $LITE"
  [recontrast_unified]="--method recontrast --iters 300 --align $ALIGN $LITE"
  [uniad_unified]="--method uniad --iters 300 --batch_size 16 --align $ALIGN $LITE"
)
for group in "revdist_unified recontrast_unified uniad_unified" "noco revdist_separate recontrast_separate"; do
  for weights in $WEIGHTS; do
    for seed in 0 1 2; do
      for name in $group; do
        dir=$OUT/${weights}_seed${seed}/$name
        if compgen -G "$dir/*/results.csv" > /dev/null; then continue; fi
        rm -rf "$dir"; mkdir -p "$dir"
        start=$(date +%s)
        python train_mvtec.py ${RUNS[$name]} $COMMON --weights "$weights" --seed "$seed" --out_dir "$dir" \
          > "$dir.log" 2>&1 || { echo "FAILED $dir (see $dir.log)"; continue; }
        echo "$weights seed $seed $name: $(( $(date +%s) - start )) s"
      done
    done
  done
done
# Dinomaly: no DINOv2 weights reach an offline machine, so a random-weight ViT-S/14 at 112 px (the demo preset's)
for seed in 0 1 2; do
  dir=$OUT/none_seed${seed}/dinomaly_unified
  if compgen -G "$dir/*/results.csv" > /dev/null; then continue; fi
  rm -rf "$dir"; mkdir -p "$dir"
  start=$(date +%s)
  python train_mvtec.py --method dinomaly --vit small --weights none --image_size 112 --crop_size 0 --eval_size 0 \
    --iters 300 --align $ALIGN --data_path "$MIXTURE" --device cpu --seed "$seed" --out_dir "$dir" \
    > "$dir.log" 2>&1 || { echo "FAILED $dir (see $dir.log)"; continue; }
  echo "none seed $seed dinomaly_unified: $(( $(date +%s) - start )) s"
done
