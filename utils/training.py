"""What the scripts' training loop draws on: an endless stream of shuffled batches (from cached
frozen features, from the encoder, or plain images), the number of iterations a run makes, and
the fingerprint that decides whether a saved model can be reused."""
import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from utils.features import shuffled_batches


def batch_stream(source, generator, device, drop_last=False, start=0):
    """Batches from `source` (CachedBatches, EncodedBatches or ImageBatches), epoch after epoch,
    each epoch in a new random order drawn from `generator`. With drop_last, short batches are skipped.
    The first `start` batches are passed over without being loaded: the stream a run resumed at
    iteration `start` continues with is the one it would have drawn."""
    per_epoch = len(source) // source.batch_size if drop_last else -(-len(source) // source.batch_size)
    if per_epoch == 0:
        raise ValueError(f"no full batch of {source.batch_size} in {len(source)} training images: "
                         "lower --batch_size")
    while True:
        skip = min(start, per_epoch)
        start -= skip
        for batch in source.epoch(generator, device, skip=skip):
            if drop_last and len(next(iter(batch.values()))) < source.batch_size:
                continue
            yield batch


def iterations(setting, epochs, iters, n_images, batch_size, drop_last):
    """Training length: `iters` in the unified setting; in the separate one, `epochs` passes."""
    if setting == "unified":
        return iters
    per_epoch = n_images // batch_size if drop_last else -(-n_images // batch_size)
    return epochs * per_epoch


class ImageBatches:
    """Shuffled batches of {"image": tensor} for methods that train on images (a trainable encoder)."""

    def __init__(self, dataset, batch_size, num_workers=0):
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers

    def __len__(self):
        return len(self.dataset)

    def epoch(self, generator, device, skip=0):
        batches = [rows.tolist() for rows in shuffled_batches(len(self.dataset), self.batch_size, generator)][skip:]
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                            persistent_workers=False, pin_memory=torch.device(device).type == "cuda")
        for batch in loader:
            yield {"image": batch["image"].to(device, non_blocking=True)}


def fingerprint(config, ignore):
    """A short hash of the configuration that determines a trained model (options in `ignore` left out)."""
    kept = {k: v for k, v in sorted(config.items()) if k not in ignore}
    return hashlib.sha256(json.dumps(kept, default=str, sort_keys=True).encode()).hexdigest()[:12]


def saved_state(sources, name, training_config, ignore, must_match=True):
    """The state saved as `name` by a model trained exactly so (options in `ignore` aside), from the
    first of `sources` (the run being resumed, then --checkpoint: a run folder holding
    checkpoints/<name>.pt, or one .pt file, which is the base model itself and has its heads beside
    it) that has one; None if none has. A base model (must_match) found in --checkpoint but trained
    otherwise is an error naming the options that differ; a head that differs is trained again."""
    resume, checkpoint = sources
    for source in sources:
        if not source:
            continue
        path = Path(source)
        if path.is_file():
            path = path if must_match else path.parent / f"{name}.pt"
        else:
            path = path / "checkpoints" / f"{name}.pt"
        if not path.is_file():
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("fingerprint") == fingerprint(training_config, ignore):
            return state
        if source == checkpoint and must_match:
            saved = state.get("training_config", {})
            differ = sorted(k for k in set(training_config) | set(saved) if k not in ignore
                            and saved.get(k, "<absent>") != training_config.get(k, "<absent>"))
            raise ValueError(f"--checkpoint {path}: trained with another configuration (differs in {differ})")
    return None


def training_snapshot(model, optimizer, scheduler, iteration, model_fingerprint):
    """Everything an interrupted training needs to go on exactly: model, optimiser and schedule
    states, the iteration reached and the random number generators' states."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(), "iteration": iteration,
            "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "fingerprint": model_fingerprint}


def restore_snapshot(path, model_fingerprint, model, optimizer, scheduler):
    """Load a training_snapshot saved at `path` into the model, optimiser and schedule and restore
    the RNG states; return its iteration (0 when there is none, or it was trained otherwise)."""
    path = Path(path)
    if not path.is_file():
        return 0
    saved = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states, a Counter
    if saved.get("fingerprint") != model_fingerprint:
        return 0
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return saved["iteration"]
