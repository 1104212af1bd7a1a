"""NoCo against scikit-learn's IsolationForest and OneClassSVM on MNIST, one-class protocol, in one run.

    python benchmarks/bench_mnist.py --data_path data

For each digit: train on that digit's training images (about 6,000), test on all 10,000 test images
(label 0 for the digit, 1 otherwise). NoCo runs through train_mnist.py with the options below (a
random-init resnet18 here, since ImageNet weights cannot be downloaded on this machine), once
trained and once with --epochs 0 (its cold start, to show what training adds); the two
baselines see the raw 784 pixels scaled to [0, 1], with scikit-learn's defaults (IsolationForest:
100 trees; OneClassSVM: RBF kernel, gamma="scale", nu=0.1). Writes the three tables side by side.
"""
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.svm import OneClassSVM  # noqa: E402
from torchvision.datasets import MNIST  # noqa: E402

from utils.config import parse_config  # noqa: E402
from utils.metrics import compute_metrics  # noqa: E402
from utils.results import atomic_write  # noqa: E402

cfg = parse_config({"data_path": "data", "backbone": "resnet18", "weights": "none", "image_size": 64,
                    "crop_size": 0, "epochs": 20, "out_dir": "results", "seed": 0})

# NoCo, through the script a user runs: trained, and its cold start (the untrained detector) ------
def run_noco(epochs):
    command = [sys.executable, str(REPO / "train_mnist.py"), "--dataset", "mnist", "--data_path", cfg.data_path,
               "--backbone", cfg.backbone, "--weights", cfg.weights, "--image_size", str(cfg.image_size),
               "--crop_size", str(cfg.crop_size), "--epochs", str(epochs), "--out_dir", cfg.out_dir,
               "--seed", str(cfg.seed), "--save_checkpoints", "false"]
    print(" ".join(command[1:]), flush=True)
    started = time.time()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    csv = Path(done.stdout.strip().splitlines()[-1].removeprefix("results: "))
    csv = csv if csv.is_absolute() else REPO / csv
    print(f"NoCo, {epochs} epochs: {time.time() - started:.0f} s, table {csv}", flush=True)
    return csv, pd.read_csv(csv).set_index("class")


noco_csv, noco = run_noco(cfg.epochs)
_, cold_start = run_noco(0)

# the baselines on raw pixels, same protocol ----------------------------------------
train, test = MNIST(cfg.data_path, train=True), MNIST(cfg.data_path, train=False)
train_x, test_x = (d.data.reshape(len(d), -1).float().numpy() / 255 for d in (train, test))
train_y, test_y = train.targets.numpy(), test.targets.numpy()
baselines = {"IsolationForest": lambda: IsolationForest(random_state=cfg.seed),
             "OneClassSVM": lambda: OneClassSVM(kernel="rbf", gamma="scale", nu=0.1)}
rows = []
for digit in range(10):
    row = {"class": str(digit), "NoCo I-AUROC": noco.loc[str(digit), "I-AUROC"],
           "NoCo cold start I-AUROC": cold_start.loc[str(digit), "I-AUROC"]}
    labels = (test_y != digit).astype(int)
    for name, make in baselines.items():
        started = time.time()
        model = make().fit(train_x[train_y == digit])
        scores = -model.score_samples(test_x)  # higher = more anomalous
        row[f"{name} I-AUROC"] = 100 * compute_metrics(torch.from_numpy(scores), labels)["I-AUROC"]
        row[f"{name} s"] = round(time.time() - started, 1)
    rows.append(row)
    print(row, flush=True)

table = pd.DataFrame(rows)
mean = table.drop(columns="class").mean()
table = pd.concat([table, pd.DataFrame([{"class": "mean", **mean.to_dict()}])], ignore_index=True)
csv_path = atomic_write(noco_csv.parent / "mnist_noco_vs_baselines.csv",
                        lambda tmp: table.to_csv(tmp, index=False, float_format="%.2f"))
print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
print(f"results: {csv_path}")
