"""predict.py's scoring speed against train_mvtec.py's own evaluation pass, on the CPU, on the same
images: the run's test images of every class it trained on.

    python benchmarks/bench_predict.py --run results/<run>               # the run's alignment (cada if trained)
    python benchmarks/bench_predict.py --run results/<run> --align none --repeats 3
    python benchmarks/bench_predict_sizes.py    # trains a small run per method at its paper input size, then this

predict: decode, transform, encoder, model, calibration, blur and image score per batch (utils.inference).
evaluation: the same decode and transform (the test dataset), then collect_maps and the scoring of
utils.evaluation (aligned_maps, blur, image score) as train_mvtec.py runs them. Both in one process, the best
of `--repeats` passes each (the two run in turn); it prints images per second and the largest score difference,
absolute and relative to the largest score (with `--json`, also one line of JSON with them, the run's method,
encoder and input side). The scores agree to float32 rounding, which depends on how the images are batched:
predict's batches run across the classes, the evaluation's within each class.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.mvtec import MVTecDataset  # noqa: E402
from utils.evaluation import aligned_maps, collect_maps, scored  # noqa: E402
from utils.inference import ImageFiles, build_scorer, collate, load_run, run_transform  # noqa: E402


def best_of(repeats, *passes):
    """The shortest time and the result of each pass, over `repeats` rounds that run them in turn (so that a
    machine shared with other work slows them alike)."""
    times, results = [[] for _ in passes], [None] * len(passes)
    for _ in range(repeats):
        for index, work in enumerate(passes):
            started = time.perf_counter()
            results[index] = work()
            times[index].append(time.perf_counter() - started)
    return [(min(spent), result) for spent, result in zip(times, results)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--align", default="")
    parser.add_argument("--class_name", default="")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="end with one line of JSON (bench_predict_sizes.py)")
    args = parser.parse_args()
    trained = load_run(args.run, args.align, args.class_name)
    cfg, device = trained.cfg, torch.device("cpu")
    scorer = build_scorer(trained, device)
    tests = [MVTecDataset(cfg.data_path, c, "test", cfg.image_size, cfg.crop_size, resize=cfg.resize)
             for c in trained.classes]
    files = [path for test in tests for path, *_ in test.samples]

    def predict_pass():
        scores = []
        for _, batch, _ in DataLoader(ImageFiles(files, run_transform(cfg)), args.batch_size, collate_fn=collate):
            with torch.no_grad():
                scores.append(scorer(batch)[1])
        return torch.cat(scores)

    def evaluation_pass():
        scores = []
        for index, test in enumerate(tests):
            batches = ((scorer.model_input(b["image"]), b["label"], b["mask"][:, 0].bool())
                       for b in DataLoader(test, args.batch_size))
            head_input = (lambda m, x: scorer.method.head_input(m, x, cfg.align_input)) if trained.head_state else None
            class_maps = collect_maps(scorer.model, batches, head_input)
            scores.append(scored(aligned_maps(class_maps, scorer.alignment, index), cfg)[1])
        return torch.cat(scores)

    (predict_s, predict_scores), (evaluation_s, evaluation_scores) = best_of(args.repeats, predict_pass,
                                                                             evaluation_pass)
    encoder = scorer.method.encoder_name(cfg)  # Dinomaly's is its --vit
    side, difference = cfg.crop_size or cfg.image_size, (predict_scores - evaluation_scores).abs().max().item()
    relative = difference / max(evaluation_scores.abs().max().item(), 1e-30)  # scores of random weights can be huge
    print(f"{len(files)} images, {cfg.method} [{trained.align}], {encoder} at {side} px"
          + (f" (maps scored at {cfg.eval_size} px)" if cfg.eval_size else "") + f", {torch.get_num_threads()} threads")
    print(f"predict     {len(files) / predict_s:8.1f} images/s")
    print(f"evaluation  {len(files) / evaluation_s:8.1f} images/s")
    print(f"largest score difference {difference:.2e} ({relative:.1e} of the largest score)")
    if args.json:
        print(json.dumps({"method": cfg.method, "align": trained.align, "encoder": encoder, "input_px": side,
                          "eval_size": cfg.eval_size, "images": len(files), "threads": torch.get_num_threads(),
                          "predict_images_per_s": len(files) / predict_s,
                          "evaluation_images_per_s": len(files) / evaluation_s,
                          "largest_score_difference": difference, "relative_score_difference": relative}))


if __name__ == "__main__":
    main()
