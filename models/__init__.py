"""The methods of train_mvtec.py, one registry entry each (METHODS): what a method trains on, how its
frozen encoder and its model are built, what the alignment head reads, which options are its own,
its option checks, its gradient clipping and any step before training.

Every model has one face:
    loss(batch) -> scalar tensor                 the training objective on one batch
    anomaly_map(batch) -> (B, H, W) float32      no_grad; at the input size, before the blur
    configure_optimizers(cfg, total_iters) -> (optimizer, scheduler or None)   via utils.optim
    bottleneck_features(batch) -> (B, C, h, w)   what the CADA head reads (methods with a bottleneck)
A batch is the frozen encoder's feature dict (trains_on "features": the script may cache it) or
{"image": images} (trains_on "images": the method trains an encoder of its own, or, as Dinomaly, runs its
frozen encoder inside every step).

Adding a method: one model file with that face, one Method entry below (its presets: its reference settings;
its encoder option and CPU benchmark settings), its line in benchmarks/method_facts.py (the torch-free copy the
table scripts read) and its rows in the README; tests/test_methods.py then checks its face, and
tests/test_bench_registry.py its benchmark facts.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from models import dinomaly, uniad
from models.backbones import EFFICIENTNETS, build_encoder, load_backbone
from models.noco import NoCo
from models.recontrast import ReContrast
from models.revdist import BACKBONES as REVDIST_BACKBONES, RevDist
from utils.config import ConfigError
from utils.report import noco_polar


@dataclass(frozen=True)
class Method:
    name: str
    trains_on: str               # "features" (a frozen encoder's, cacheable) | "images" (the method trains an encoder)
    own_options: tuple           # options only this method reads: refused for the others, out of their fingerprints
    build_encoder: Callable      # (cfg) -> the frozen encoder (features) or the backbone the model copies (images)
    build_model: Callable        # (cfg, encoder, norm, generator) -> the model
    head_input: Callable         # (model, batch, align_input) -> what an alignment head reads
    check: Callable = None       # (cfg) -> None; raises ConfigError for options that do not fit the method
    grad_clip: float = 0.0       # clip the gradient norm to this in training (0: no clipping)
    before_training: Callable = None  # (model, batches, generator, device): e.g. NoCo's "mean" target
    unused: tuple = ()           # shared options it does not read: refused when given, out of its fingerprint
    presets: tuple = ()          # its reference settings: (condition, values[, note]), see method_presets
    probe: Callable = None       # (model, model input) -> per-image data of its --plots figure (NoCo's polar plot)
    encoder_option: str = "backbone"  # the option that names its encoder (Dinomaly: --vit)
    encoder_label: str = "{}"    # how tables name that encoder, from the option's value (Dinomaly: "vit_{}")
    frozen_encoder: Callable = None  # (model, built encoder) -> the frozen encoder the model runs (None: the built one)
    cpu_training: dict = None    # benchmarks/bench_unified.py's cpu size: options a 2-core CPU trains in seconds per
    #                              step (None: not one of its bases; NoCo's speed is benchmarks/bench_noco.py's)
    cpu_quick: dict = None       # benchmarks/bench_predict_sizes.py --quick: the smallest encoder and input it runs at

    def encoder_name(self, config):
        """The encoder a run's configuration names (a namespace, or config.json's dict), as the tables show it."""
        value = config[self.encoder_option] if isinstance(config, dict) else getattr(config, self.encoder_option)
        return self.encoder_label.format(value)

    def frozen_part(self, model, encoder):
        """The frozen encoder that `model` runs (built by build_encoder, or inside the model for trains_on images)."""
        return encoder if self.frozen_encoder is None else self.frozen_encoder(model, encoder)


def input_side(cfg):
    return cfg.crop_size or cfg.image_size


# the reference settings shared by RevDist and ReContrast ----------------------------------------------
RD_INPUT = {"image_size": 256, "crop_size": 0, "resize": "pil", "encoder_taps": "standard"}  # 256 px full frame
MULTI_CLASS = {"optimizer": "adamw", "lr": 2e-3, "betas": (0.9, 0.999), "weight_decay": 1e-5, "adam_eps": 1e-10,
               "amsgrad": True, "lr_drop_at": 0.8, "decoder_activation": "gelu"}  # ReContrast's multi-class code


# NoCo -------------------------------------------------------------------------------------------
def _noco_encoder(cfg):
    return build_encoder(cfg.backbone, cfg.weights, cfg.layers, cfg.encoder_taps)


def _noco_model(cfg, encoder, norm, generator):
    """Structured (patch maps) on layer taps; image-level on the semantic scripts' one pooled vector per image
    (--layers avgpool), where train_cifar10.py's radius_penalty adds its reference term to the loss."""
    side = input_side(cfg)
    with torch.no_grad():
        probe = encoder(torch.zeros(1, 3, side, side, device=next(encoder.parameters()).device))
    image_level = tuple(cfg.layers) == ("avgpool",)
    return NoCo(sum(f.shape[1] for f in probe.values()), structured=not image_level, target=cfg.target,
                target_norm=norm, p=cfg.target_p, nu=cfg.nu, radius_init=cfg.radius_init,
                radius_penalty=getattr(cfg, "radius_penalty", 0.0), generator=generator, map_size=side)


@torch.no_grad()
def _noco_mean_target(model, batches, generator, device):
    if model.target_kind == "mean":  # the mean projected training feature
        projected = [model.project(f).mean(dim=(2, 3)) for f in batches.epoch(generator, device)]
        model.set_target(torch.cat(projected).mean(0))


def _deepest_encoder_layer(model, batch, align_input):
    """NoCo has no bottleneck: its head reads the encoder's deepest tapped layer (CADA sec. 3.3)."""
    return batch[list(batch)[-1]]


# RevDist, ReContrast, UniAD ---------------------------------------------------------------------
def _bottleneck_or_encoder(model, batch, align_input):
    """The base's bottleneck (CADA sec. 4.2) or the frozen encoder's deepest tapped layer (sec. 3.3)."""
    return model.bottleneck_features(batch) if align_input == "bottleneck" else batch[list(batch)[-1]]


def _recontrast_head_input(model, batch, align_input):
    if align_input == "bottleneck":  # the frozen-encoder half of its bottleneck
        return model.bottleneck_features(batch)
    return model.frozen_encoder(batch["image"])["layer3"]


def _revdist_check(cfg):
    if input_side(cfg) % 32:
        raise ConfigError(f"--image_size/--crop_size: {cfg.method}'s decoder mirrors a stride-32 encoder, so the "
                          f"input side must be a multiple of 32, got {input_side(cfg)}")
    if cfg.backbone not in REVDIST_BACKBONES:
        raise ConfigError(f"--backbone: {cfg.method}'s bottleneck and decoder are built for "
                          f"{', '.join(REVDIST_BACKBONES)}; got {cfg.backbone}")


def _uniad_check(cfg):
    side = input_side(cfg)
    if cfg.backbone not in EFFICIENTNETS or side % 16 or side < 128:
        raise ConfigError(f"--backbone/--image_size: UniAD reads EfficientNet-B4 (or -Lite0) stages at stride 16 "
                          f"and its 7x7 neighbour mask needs a token grid over 7, so --backbone "
                          f"{' or '.join(EFFICIENTNETS)} and a side that is a multiple of 16 and at least 128; "
                          f"got {cfg.backbone}, {side}")


def _uniad_model(cfg, encoder, norm, generator):
    side = input_side(cfg) // 16
    return uniad.UniAD(uniad.token_channels(cfg.backbone), grid=(side, side), layers=("tokens",))


# Dinomaly ---------------------------------------------------------------------------------------
DINOMALY = {  # the official dinomaly_mvtec_uni.py: train (utils.py: evaluation_batch; optimizers/StableAdamW.py)
    "setting": "unified",
    "image_size": 448, "crop_size": 392, "resize": "pil",  # Resize((448, 448)), CenterCrop(392)
    "iters": 10000,  # total_iters = 10000 (dinomaly_mvtec_sep.py: 5000)
    "batch_size": 16,  # batch_size = 16 (drop_last=True)
    "optimizer": "stable_adamw",  # StableAdamW(...), update clipping clip_threshold=1.0 (its default, not overridden)
    "lr": 2e-3,  # StableAdamW(lr=2e-3); WarmCosineScheduler(base_value=2e-3)
    "betas": (0.9, 0.999),  # StableAdamW(betas=(0.9, 0.999))
    "weight_decay": 1e-4,  # StableAdamW(weight_decay=1e-4)
    "adam_eps": 1e-10,  # StableAdamW(eps=1e-10); dinomaly_mvtec_sep.py (one model per class) uses 1e-8
    "amsgrad": True,  # StableAdamW(amsgrad=True)
    "lr_drop_at": 0.0, "lr_schedule": "warmup_cosine",  # WarmCosineScheduler, stepped every iteration
    "warmup_iters": 100,  # WarmCosineScheduler(warmup_iters=100), start_warmup_value=0
    "final_lr": 2e-4,  # WarmCosineScheduler(final_value=2e-4)
    "hm_factor": 0.1,  # global_cosine_hm_percent(en, de, p=p, factor=0.1)
    "image_score": "top_mean", "top_fraction": 0.01,  # evaluation_batch(max_ratio=0.01): mean of the top 1 %
    "blur_kernel": 5, "blur_sigma": 4.0,  # get_gaussian_kernel(kernel_size=5, sigma=4), conv with zero padding
    "eval_size": 256}  # evaluation_batch(resize_mask=256): maps and masks resized to 256 x 256 before the blur


def _dinomaly_check(cfg):
    side = input_side(cfg)
    if side % 14:
        raise ConfigError(f"--image_size/--crop_size: Dinomaly's DINOv2 encoder cuts 14 x 14 patches, so the input "
                          f"side must be a multiple of 14, got {side}")
    if cfg.vit not in dinomaly.ENCODERS and cfg.vit not in dinomaly.ENCODERS.values():
        raise ConfigError(f"--vit: expected one of {', '.join(dinomaly.ENCODERS)} or "
                          f"{', '.join(dinomaly.ENCODERS.values())}, got {cfg.vit!r}")


def _dinomaly_model(cfg, vit, norm, generator):
    return dinomaly.Dinomaly(encoder=vit, bottleneck_dropout=cfg.bottleneck_dropout, hm_factor=cfg.hm_factor)


def _dinomaly_head_input(model, batch, align_input):
    """Its bottleneck's output (eval mode) or the deepest tapped encoder block, patch tokens as (B, C, h, w)."""
    return model.bottleneck_features(batch) if align_input == "bottleneck" else model.encoder_features(batch)


METHODS = {method.name: method for method in (
    Method("noco", "features", ("target", "target_norm", "target_p", "nu", "radius_init", "layers", "encoder_taps"),
           _noco_encoder, _noco_model, _deepest_encoder_layer, before_training=_noco_mean_target, probe=noco_polar,
           cpu_quick={"backbone": "resnet18", "image_size": 64, "crop_size": 0},
           presets=(({"dataset": "mpdd"}, {"batch_size": 8}, "NoCo's README: batch 8 on MPDD"),
                    ({"dataset": "visa"}, {"batch_size": 8}, "NoCo's README: batch 8 on VisA"))),
    Method("revdist", "features", ("decoder_activation", "loss_form", "recompute"),
           lambda cfg: build_encoder(cfg.backbone, cfg.weights),  # torchvision's own taps of layers 1-3
           lambda cfg, encoder, norm, generator: RevDist(cfg.backbone, activation=cfg.decoder_activation,
                                                         loss_form=cfg.loss_form, recompute=cfg.recompute),
           _bottleneck_or_encoder, check=_revdist_check,
           cpu_training={"backbone": "resnet18", "image_size": 128, "crop_size": 0},
           cpu_quick={"backbone": "resnet18", "image_size": 64, "crop_size": 0},
           presets=(({}, {"setting": "unified", **RD_INPUT}, "CADA's base: unified, RD4AD's 256 px full frame"),
                    ({"setting": "separate"},
                     {"optimizer": "adam", "lr": 5e-3, "betas": (0.5, 0.999), "weight_decay": 0.0, "amsgrad": False,
                      "epochs": 200}, "RD4AD"),
                    ({"setting": "unified"}, MULTI_CLASS, "ReContrast's multi-class code"))),
    Method("recontrast", "images", ("decoder_activation", "hm_factor", "encoder_lr", "recompute"),
           lambda cfg: load_backbone(cfg.backbone, cfg.weights),
           lambda cfg, backbone, norm, generator: ReContrast(backbone, cfg.backbone, activation=cfg.decoder_activation,
                                                             hm_factor=cfg.hm_factor, recompute=cfg.recompute),
           _recontrast_head_input, check=_revdist_check, frozen_encoder=lambda model, backbone: model.frozen_encoder,
           cpu_training={"backbone": "resnet18", "image_size": 128, "crop_size": 0},
           cpu_quick={"backbone": "resnet18", "image_size": 64, "crop_size": 0},
           presets=(({}, {"setting": "unified", **RD_INPUT}, "CADA's base: unified, RD4AD's 256 px full frame"),
                    ({"setting": "separate"},
                     {"lr": 2e-3, "betas": (0.9, 0.999), "weight_decay": 1e-5, "amsgrad": False, "epochs": 135},
                     "ReContrast single-class: 2000 iterations ~ 135 epochs on MVTec"),
                    ({"setting": "unified"}, MULTI_CLASS, "ReContrast's multi-class code"))),
    Method("uniad", "features", (),  # four EfficientNet-B4 stages resized to stride 16 and concatenated: 272 channels
           lambda cfg: uniad.TokenEncoder(build_encoder(cfg.backbone, cfg.weights, uniad.UNIAD_LAYERS)),
           _uniad_model, _bottleneck_or_encoder, check=_uniad_check, grad_clip=uniad.GRAD_CLIP,
           cpu_training={"image_size": 128, "crop_size": 0, "batch_size": 16},  # its own encoder, EfficientNet-B4
           cpu_quick={"backbone": "efficientnet_lite0", "image_size": 128, "crop_size": 0},  # its smallest side
           presets=(({}, {"setting": "unified", "backbone": "efficientnet_b4", "image_size": 224, "crop_size": 0,
                          "resize": "pil", "encoder_taps": "standard", "optimizer": "adamw", "lr": 3e-4,
                          "betas": (0.9, 0.999), "weight_decay": 1e-4, "amsgrad": False, "adam_eps": 1e-8,
                          "lr_drop_at": 0.0, "iters": 50000, "batch_size": 64, "blur_sigma": 0.0, "cada_beta": 10.0,
                          "cada_iters": 20000}, "the CADA paper's UniAD; UniAD maps are not blurred"),
                    ({"setting": "separate"}, {"image_score": "pooled_max"}, "UniAD's image score"))),
    Method("dinomaly", "images", ("vit", "bottleneck_dropout", "hm_factor"),  # its frozen ViT runs in every step
           lambda cfg: dinomaly.build_vit(cfg.vit, cfg.weights), _dinomaly_model, _dinomaly_head_input,
           check=_dinomaly_check, grad_clip=dinomaly.GRAD_CLIP, unused=("backbone",),  # --vit is its encoder
           encoder_option="vit", encoder_label="vit_{}", frozen_encoder=lambda model, vit: model.encoder,
           cpu_training={"vit": "small", "image_size": 112, "crop_size": 0, "batch_size": 16},
           cpu_quick={"vit": "small", "image_size": 56, "crop_size": 0, "eval_size": 0},
           presets=(({}, DINOMALY, "the official dinomaly_mvtec_uni.py"),
                    ({"setting": "separate"}, {"epochs": 320, "adam_eps": 1e-8},
                     "dinomaly_mvtec_sep.py: 5000 iterations of 16 ~ 320 epochs of an average MVTec AD class "
                     "(15.5 batches per epoch), eps 1e-8"))),
)}
METHOD_OPTIONS = sorted({option for method in METHODS.values() for option in method.own_options})


def method_of(cfg, given=()):
    """The registry entry of cfg.method after its checks; an unknown method, or an option given on the
    command line (`given`) that belongs to other methods only, is refused in one line."""
    if cfg.method not in METHODS:
        raise ConfigError(f"--method: expected one of {', '.join(METHODS)}, got {cfg.method!r}")
    method = METHODS[cfg.method]
    for option in sorted(set(given) & set(method.unused)):
        hint = f" (its encoder is --vit: {', '.join(dinomaly.ENCODERS)})" if option == "backbone" else ""
        raise ConfigError(f"--{option}: --method {method.name} does not read it{hint}")
    for option in sorted(set(given) & set(METHOD_OPTIONS) - set(method.own_options)):
        users = [m.name for m in METHODS.values() if option in m.own_options]
        raise ConfigError(f"--{option}: an option of {', '.join(users)}; --method {method.name} does not use it")
    if method.check is not None:
        method.check(cfg)
    return method


def not_in_fingerprint(method):
    """The options of other methods and those it does not read: they cannot change its trained model."""
    return set(METHOD_OPTIONS) - set(method.own_options) | set(method.unused)


def option_owners():
    """{option: the methods whose own option it is} (utils.options' owner column; the others refuse it)."""
    return {option: tuple(m.name for m in METHODS.values() if option in m.own_options) for option in METHOD_OPTIONS}


def method_presets():
    """Every method's reference settings as train_mvtec.py's presets: (condition, values) pairs, the condition
    led by the method, in registry order (those of one method in its order; two methods' never both apply)."""
    return [({"method": method.name, **condition}, values, *note)
            for method in METHODS.values() for condition, values, *note in method.presets]
