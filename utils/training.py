"""What the scripts' training loop draws on: an endless stream of shuffled batches (from cached
frozen features, from the encoder, or plain images), the number of iterations a run makes, the
fingerprint that decides whether a saved model can be reused, and the reading back of saved models
and training snapshots: a damaged file, or one not of this kind, is refused in one line (ValueError)."""
import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from utils import cpu, distributed
from utils.config import ConfigError, resolve_device
from utils.features import CachedBatches, EncodedBatches, extract_features, shuffled_batches
from utils.results import read_partial_rows


def batch_stream(source, generator, device, drop_last=False, start=0, option="batch_size"):
    """Batches from `source` (CachedBatches, EncodedBatches or ImageBatches), epoch after epoch,
    each epoch in a new random order drawn from `generator`. With drop_last, short batches are skipped.
    The first `start` batches are passed over without being loaded: the stream a run resumed at
    iteration `start` continues with is the one it would have drawn. `option` names the batch size in
    messages."""
    per_epoch = len(source) // source.batch_size if drop_last else -(-len(source) // source.batch_size)
    if per_epoch == 0:
        raise ValueError(f"--{option} {source.batch_size}: no full batch in {len(source)} training images; "
                         f"lower --{option}")
    while True:
        skip = min(start, per_epoch)
        start -= skip
        for batch in source.epoch(generator, device, skip=skip):
            if drop_last and len(next(iter(batch.values()))) < source.batch_size:
                continue
            yield batch


def fit(model, batches, optimizer, scheduler, total_iters, start=0, loss_of=None, grad_clip=0.0, autocast=None,
        after_step=None, desc="train", show=True):
    """The one training loop of every model and alignment head: steps start..total_iters-1 of loss,
    backward, gradient clipping (grad_clip > 0: torch.nn.utils.clip_grad_norm_ over all of model's
    parameters), optimiser step and schedule step, in train mode; returns the model in eval mode.

    batches    an iterator of batches that starts at batch `start` (batch_stream(..., start=start), or this
               process's slices of it under torchrun); total_iters - start batches are drawn
    loss_of    the loss function (default model.loss; DistributedDataParallel's wrapper under torchrun)
    autocast   a device type ("cuda") to run the loss under bf16 autocast, or None for float32
    after_step called with the number of finished iterations after each step (training snapshots)
    """
    loss_of = loss_of or model.loss
    model.train()
    for it in (progress := tqdm(range(start, total_iters), desc=desc, leave=False, disable=not show)):
        batch = next(batches)
        with torch.autocast(autocast or "cpu", dtype=torch.bfloat16, enabled=autocast is not None):
            loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if it % 10 == 0 or it == total_iters - 1:
            progress.set_postfix(loss=f"{loss.item():.4f}")
        if after_step is not None:
            after_step(it + 1)
    return model.eval()


def check_batches(sizes, batch_size, option, drop_last, world=1):
    """Refuse (ValueError, one line naming --`option`), before any work, a batch size that would fail
    mid-run: `sizes` maps each training set's name to its number of images. With drop_last a set needs
    one full batch; without it (the separate setting keeps the last short batch) under torchrun that
    last batch must split evenly over the `world` processes too, as every other does."""
    for name, n in sizes.items():
        if drop_last and n < batch_size:
            raise ValueError(f"--{option} {batch_size}: {name} has {n} training images, not one full batch "
                             f"(the last short batch is dropped); lower --{option}")
        if not drop_last and world > 1 and n % batch_size % world:  # n % b = n modulo world for every b it takes
            raise ValueError(f"--{option} {batch_size}: {name}'s {n} training images end in a short batch of "
                             f"{n % batch_size}, which does not split over {world} processes (the separate setting "
                             f"keeps it, as NoCo and RD4AD do, and no --{option} splits it: {n} is not a multiple "
                             f"of {world}); run it on one process")


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


def ignored(config, ignore):
    """The options `ignore` leaves out of this configuration: a set, or a function of the configuration (the
    options that cannot change the model it trains depend on it, e.g. the schedule's unused settings)."""
    return set(ignore(config) if callable(ignore) else ignore)


def fingerprint(config, ignore):
    """A short hash of the configuration that determines a trained model (options in `ignore` left out; see
    `ignored`)."""
    ignore = ignored(config, ignore)
    kept = {k: v for k, v in sorted(config.items()) if k not in ignore}
    return hashlib.sha256(json.dumps(kept, default=str, sort_keys=True).encode()).hexdigest()[:12]


CHECKPOINT_KEYS = ("model", "training_config", "fingerprint")  # what Trainer saves
SNAPSHOT_KEYS = ("model", "optimizer", "scheduler", "iteration", "rng", "cuda_rng", "fingerprint")  # training_snapshot
NOT_OPTIONS = {"training_data"}  # what a training configuration holds besides the options: data_fingerprint's hash
KINDS = {"checkpoint": ("a model checkpoint", CHECKPOINT_KEYS), "snapshot": ("a training snapshot", SNAPSHOT_KEYS)}


def _unreadable(error):
    if isinstance(error, (PermissionError, IsADirectoryError)):  # a truncated zip can raise another OSError
        return f"cannot be opened: {error.strerror}"
    if "Unsupported global" in str(error):  # torch's message goes on to advise weights_only=False: never quoted
        return "it holds Python objects other than tensors and plain containers, which this suite never saves"
    return f"cannot be read as a PyTorch file: truncated or not a .pt; {type(error).__name__}"


def load_our_file(path, label, kind, config=None, added=None):
    """The dict this suite saved at `path` as a model checkpoint (kind "checkpoint") or a training
    snapshot ("snapshot"), loaded with weights_only=True (which also takes MultiStepLR's Counter of
    milestones). Given the run's `config`, a checkpoint saved with other options (another script or
    version) or for another --method is refused too; `added` ({option: default}, utils.options.added_options)
    names options added since earlier versions: a checkpoint saved without one was trained as its default, and
    its training_config is completed so. Every refusal is a ValueError of one line that starts with `label` (the
    file as the user named it)."""
    description, keys = KINDS[kind]
    try:
        with warnings.catch_warnings():  # damaged bytes can make the unpickler warn besides raising
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # damaged bytes raise a dozen types: RuntimeError, UnpicklingError, KeyError, ...
        raise ValueError(f"{label}: not {description} of this suite ({_unreadable(error)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{label}: not {description} of this suite (it holds a {type(state).__name__})")
    saved = state.get("training_config")
    if isinstance(saved, dict) and added:
        saved = state["training_config"] = {**{k: v for k, v in added.items() if k not in saved}, **saved}
    if kind == "checkpoint" and config is not None and isinstance(saved, dict):
        if set(saved) - NOT_OPTIONS != set(config) - NOT_OPTIONS:
            raise ValueError(f"{label}: a checkpoint of another script or version "
                             f"(options differ: {sorted((set(saved) ^ set(config)) - NOT_OPTIONS)})")
        if saved.get("method") != config.get("method"):
            raise ValueError(f"{label}: a checkpoint of --method {saved.get('method')}, "
                             f"this run is --method {config.get('method')}")
    if missing := [key for key in keys if key not in state]:
        other, other_keys = KINDS["snapshot" if kind == "checkpoint" else "checkpoint"]
        found = f": it is {other}" if all(key in state for key in other_keys) else ""
        raise ValueError(f"{label}: not {description} of this suite (no {', '.join(missing)}{found})")
    return state


def _label(option, source, path):
    """A file as messages name it: the option's value, then the file's place in that folder if it is inside."""
    source = Path(source)
    if path == source:
        return f"--{option} {source}"
    return f"--{option} {source}: {path.relative_to(source) if path.is_relative_to(source) else path}"


def _checkpoint_file(source, name, must_match):
    """checkpoints/<name>.pt of a run folder; given one .pt file, that file (the base model) or <name>.pt beside it."""
    path = Path(source)
    if path.is_file():
        return path if must_match else path.parent / f"{name}.pt"
    return path / "checkpoints" / f"{name}.pt"


def saved_state(sources, name, training_config, ignore, must_match=True, added=None):
    """The state saved as `name` by a model trained exactly so (options in `ignore` aside, see `ignored`), from the
    first of `sources` (the run being resumed, then --checkpoint: a run folder holding
    checkpoints/<name>.pt, or one .pt file, which is the base model itself and has its heads beside
    it) that has one; None if none has. A file that is damaged or not such a checkpoint is an error
    (see load_our_file); so is a base model (must_match) found in --checkpoint but trained otherwise,
    naming the options that differ; a head that differs is trained again. The saved training configuration
    is compared, not only the saved key: a checkpoint whose key left out fewer options (an older version's)
    is reused when its model was trained so."""
    for option, source in zip(("resume", "checkpoint"), sources):
        if not source:
            continue
        path = _checkpoint_file(source, name, must_match)
        if not path.is_file():
            continue
        state = load_our_file(path, _label(option, source, path), "checkpoint", training_config, added)
        key, saved = fingerprint(training_config, ignore), state["training_config"]
        if state["fingerprint"] == key or (isinstance(saved, dict) and fingerprint(saved, ignore) == key):
            return state
        if option == "checkpoint" and must_match:
            left_out = ignored(training_config, ignore) & ignored(saved, ignore)
            differ = sorted(k for k in set(training_config) | set(saved) if k not in left_out
                            and saved.get(k, "<absent>") != training_config.get(k, "<absent>"))
            raise ValueError(f"--checkpoint {path}: trained with another configuration (differs in {differ})")
    return None


def check_saved_files(resume, checkpoint, config, added=None):
    """Read every file a run reads back, once, right after the command line is parsed: --resume's
    checkpoints, training snapshots and partial table, and --checkpoint's model checkpoint(s) (one .pt
    file, or a run folder's checkpoints/). A damaged file, or one of another script or method, is
    refused (load_our_file, read_partial_rows) before any work rather than when its model comes up."""
    for option, source in (("resume", resume), ("checkpoint", checkpoint)):
        if not source:
            continue
        source = Path(source)
        for path in [source] if source.is_file() else sorted((source / "checkpoints").glob("*.pt")):
            kind = "snapshot" if path.name.endswith(".train.pt") else "checkpoint"
            if option == "resume" or kind == "checkpoint":  # --checkpoint's snapshots are never read
                load_our_file(path, _label(option, source, path), kind, config, added)
    if resume:
        read_partial_rows(resume)


def training_snapshot(model, optimizer, scheduler, iteration, model_fingerprint):
    """Everything an interrupted training needs to go on exactly: model, optimiser and schedule
    states, the iteration reached and the random number generators' states."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(), "iteration": iteration,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "fingerprint": model_fingerprint}


def restore_snapshot(path, model_fingerprint, model, optimizer, scheduler):
    """Load a training_snapshot saved at `path` (<run folder>/checkpoints/<name>.train.pt, the run being
    resumed) into the model, optimiser and schedule and restore the RNG states; return its iteration
    (0 when there is none, or it was trained otherwise). A damaged snapshot is refused (load_our_file)."""
    path = Path(path)
    if not path.is_file():
        return 0
    saved = load_our_file(path, _label("resume", path.parents[1], path), "snapshot")
    if saved["fingerprint"] != model_fingerprint:
        print(f"{_label('resume', path.parents[1], path)}: saved while training with other options or data; "
              "training starts again")
        return 0
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return saved["iteration"]


def data_fingerprint(datasets):
    """A short hash of the training images' content as files: each dataset's class name and the sorted
    names and sizes of its images (not their folder), so that the same data under another path reuses a
    checkpoint and another folder with the same class names does not."""
    listing = [(dataset.class_name, sorted((Path(path).name, Path(path).stat().st_size)
                                           for path, *_ in dataset.samples)) for dataset in datasets]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:12]


def class_data_fingerprint(datasets):
    """A short hash of every file one class's table row is computed from (its training, held-out and test
    images and their masks): each file's name, the names of its two parent folders (split, defect type)
    and its size. --resume compares it with the data it is given (RunFolder.check_finished_data)."""
    files = sorted((*Path(file).parts[-3:], Path(file).stat().st_size)
                   for dataset in datasets for image, _, mask in dataset.samples for file in (image, mask) if file)
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:12]


class Trainer:
    """Trains a model (base or alignment head) by `fit`, or reuses the one saved under its name when it
    was trained exactly so (the run being resumed, then --checkpoint); saves training snapshots every
    `checkpoint_every` iterations and the last checkpoint. Under torchrun (world > 1) the loss runs
    under DistributedDataParallel on this process's slice of every batch."""

    def __init__(self, run, resume, checkpoint, seed, device, rank=0, world=1, checkpoint_every=0,
                 save_checkpoints=True, amp=False, added=None):
        self.run, self.sources, self.seed, self.device, self.added = run, (resume, checkpoint), seed, device, added
        self.rank, self.world, self.checkpoint_every, self.save = rank, world, checkpoint_every, save_checkpoints
        self.autocast = device.type if amp else None

    def __call__(self, model, name, training_config, ignore, batches, total_iters, cfg, base=True, drop_last=False,
                 grad_clip=0.0, before_training=None, batch_option="batch_size"):
        """`batches` makes the training batches (called only when the model is trained, not reused);
        `cfg` goes to model.configure_optimizers. Alignment heads (base=False) train in float32, and a head
        saved under other head options is trained again (a base model so saved is an error). `batch_option`
        is the option that set the batch size, for messages. A model reused from --checkpoint is saved in this run
        too (with save_checkpoints), so that the run folder serves predict.py and a later --checkpoint alone."""
        state = saved_state(self.sources, name, training_config, ignore, must_match=base, added=self.added)
        if state is not None:
            model.load_state_dict(state["model"])
            if self.save and not (self.run.path / "checkpoints" / f"{name}.pt").is_file():  # from --checkpoint: the
                self.run.save_checkpoint({"model": state["model"], "training_config": training_config,  # run folder
                                          "fingerprint": fingerprint(training_config, ignore)}, name)  # holds it
            return model.eval()
        source, generator = batches(), torch.Generator().manual_seed(self.seed)
        if before_training is not None:
            before_training(model, source, generator, self.device)
        optimizer, scheduler = model.configure_optimizers(cfg, total_iters)
        key, snapshot_name, start = fingerprint(training_config, ignore), f"{name}.train", 0
        torch.manual_seed(self.seed + self.rank)  # dropout and jitter differ between processes; the batch order not
        resume = self.sources[0]
        if resume and (start := restore_snapshot(Path(resume) / "checkpoints" / f"{snapshot_name}.pt", key,
                                                 model, optimizer, scheduler)):  # the RNG state too
            print(f"{name}: resuming training at iteration {start} of {total_iters}")
        stream = batch_stream(source, generator, self.device, drop_last, start=start, option=batch_option)
        if self.world > 1:
            stream = (distributed.local_slice(batch, self.rank, self.world, batch_option) for batch in stream)

        def snapshot(done):
            if self.checkpoint_every and done % self.checkpoint_every == 0 and done < total_iters:
                self.run.save_checkpoint(training_snapshot(model, optimizer, scheduler, done, key), snapshot_name)

        fit(model, stream, optimizer, scheduler, total_iters, start,
            distributed.parallel_loss(model, self.device) if self.world > 1 else None, grad_clip,
            self.autocast if base else None, snapshot, f"{name} train", show=self.rank == 0)
        distributed.from_rank0(model, self.world)  # every process evaluates the model rank 0 saves
        if self.save:
            self.run.save_checkpoint({"model": model.state_dict(), "training_config": training_config,
                                      "fingerprint": key}, name)
        self.run.remove_checkpoint(snapshot_name)
        return model.eval()


def place(cfg, batch_options):
    """(rank, world, device, memory format) of this process (torchrun: one of `world`, utils.distributed), after
    refusing a batch size (each option of `batch_options`) that does not split evenly over the processes. Off
    CUDA, cfg.amp and cfg.channels_last are turned off (config.json records what ran); on a CPU with
    cfg.keep_freed_memory, malloc keeps freed memory (utils.cpu)."""
    rank, world, device = distributed.setup(cfg.device)
    device = device or resolve_device(cfg.device)
    for option in batch_options:
        if getattr(cfg, option) % world:
            raise ConfigError(f"--{option} {getattr(cfg, option)}: it must split evenly over the {world} processes")
    cfg.amp, cfg.channels_last = (cfg.amp, cfg.channels_last) if device.type == "cuda" else (False, False)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if device.type == "cpu" and cfg.keep_freed_memory:
        cpu.keep_freed_memory()
    return rank, world, device, memory_format


def training_batches(trains_on, encoder, train_set, cfg, device, desc):
    """A base model's training batches: the images (trains_on "images"), or the frozen encoder's features,
    computed once (no augmentation; cfg.cache_dtype, cache_memory_gb, cache_dir) or, without
    cfg.cache_features, at every batch. `desc` names the feature extraction's progress bar."""
    if trains_on == "images":
        return ImageBatches(train_set, cfg.batch_size, cfg.num_workers)
    if not cfg.cache_features:
        return EncodedBatches(encoder, train_set, cfg.batch_size, cfg.num_workers)
    return CachedBatches(extract_features(encoder, train_set, device, dtype=getattr(torch, cfg.cache_dtype),
                                          memory_budget_gb=cfg.cache_memory_gb, cache_dir=cfg.cache_dir or None,
                                          desc=f"{desc} train features", batch_size=cfg.batch_size,
                                          num_workers=cfg.num_workers), cfg.batch_size)


def check_reuse(cfg, run, names, saved_heads):
    """Before anything runs: with cfg.checkpoint (one .pt file, or a run folder), every base model of `names`
    must be in it (ConfigError); with cfg.resume and cfg.save_checkpoints, a finished model whose checkpoint, or
    one of its heads' (`saved_heads`: the alignment kinds saved), is gone is trained again where needed (its rows
    are dropped from `run`, a RunFolder)."""
    if cfg.checkpoint:
        wanted = list(names)
        if not Path(cfg.checkpoint).is_file() and not all(
                (Path(cfg.checkpoint) / "checkpoints" / f"{name}.pt").is_file() for name in wanted):
            raise ConfigError(f"--checkpoint {cfg.checkpoint}: expected a .pt file or a run folder with "
                              f"checkpoints/{{{','.join(wanted)}}}.pt")
    if cfg.resume and cfg.save_checkpoints:
        for name in names:
            files = [f"{name}.pt", *(f"{name}_{kind}.pt" for kind in saved_heads)]
            if run.finished(name) and (lost := [f for f in files if not (run.path / "checkpoints" / f).is_file()]):
                print(f"{name}: checkpoints/{', '.join(lost)} missing from {run.path}: trained again where needed")
                run.rows = [row for row in run.rows if row.get("model") != name]
