"""predict.py's scoring speed against train_mvtec.py's own evaluation pass, on the CPU, on the same
images: the run's test images of every class it trained on.

    python benchmarks/bench_predict.py --run results/<run>               # the run's alignment (cada if trained)
    python benchmarks/bench_predict.py --run results/<run> --align none --repeats 3

predict: decode, transform, encoder, model, calibration, blur and image score per batch (utils.inference).
evaluation: the same decode and transform (the test dataset), then collect_maps and the scoring of
utils.evaluation (aligned_maps, blur, image score) as train_mvtec.py runs them. Both in one process,
the best of `--repeats` passes each; it prints images per second and the largest score difference.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.mvtec import MVTecDataset  # noqa: E402
from utils.evaluation import aligned_maps, collect_maps, scored  # noqa: E402
from utils.inference import ImageFiles, build_scorer, collate, load_run, run_transform  # noqa: E402


def best_of(repeats, work):
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--align", default="")
    parser.add_argument("--class_name", default="")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
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

    predict_s, predict_scores = best_of(args.repeats, predict_pass)
    evaluation_s, evaluation_scores = best_of(args.repeats, evaluation_pass)
    print(f"{len(files)} images, {cfg.method} [{trained.align}], {cfg.backbone} at {cfg.crop_size or cfg.image_size} "
          f"px, {torch.get_num_threads()} threads")
    print(f"predict     {len(files) / predict_s:8.1f} images/s")
    print(f"evaluation  {len(files) / evaluation_s:8.1f} images/s")
    print(f"largest score difference {(predict_scores - evaluation_scores).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
