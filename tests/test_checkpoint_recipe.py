"""train_mvtec.py's --checkpoint reuse follows the recipe trained (issue 26 item 3): options that cannot change
the model (--epochs in the unified setting, --amp on a CPU, the warm-up of an unused schedule) never block it."""
import json

import pytest
import torch

from tests.test_scripts import SMALL, demo_root, results_path, run_script  # noqa: F401 (demo_root: a fixture)


@pytest.mark.slow
def test_a_unified_cpu_model_is_reused_across_options_that_do_not_train_it(demo_root, tmp_path):  # noqa: F811
    args = ["train_mvtec.py", "--method", "revdist", "--dataset", "demo", "--data_path", str(demo_root),
            "--image_size", "64", "--iters", "3", "--batch_size", "8", *SMALL]
    csv = results_path(run_script(*args, "--out_dir", str(tmp_path / "a")))
    config = json.loads((csv.parent / "config.json").read_text())["config"]
    assert config["amp"] is False
    again = run_script(*args, "--out_dir", str(tmp_path / "b"), "--checkpoint", str(csv.parent), "--epochs", "7",
                       "--amp", "--channels_last", "--warmup_iters", "9", "--final_lr", "1")
    assert "unified train" not in again.stderr  # reused: neither features nor iterations
    reused, trained = (torch.load(folder / "checkpoints" / "unified.pt", weights_only=True)["model"]  # and kept:
                       for folder in (results_path(again).parent, csv.parent))  # predict.py --run serves that run
    assert reused.keys() == trained.keys() and all(torch.equal(reused[k], trained[k]) for k in trained)
    assert json.loads((results_path(again).parent / "config.json").read_text())["config"]["amp"] is False  # as run
    refused = run_script(*args, "--out_dir", str(tmp_path / "c"), "--checkpoint", str(csv.parent), "--lr", "1e-3",
                         "--amp", expect_ok=False)
    assert "trained with another configuration (differs in ['lr'])" in refused.stderr
