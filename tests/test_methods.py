"""The one face, checked over the method registry (models.METHODS): what a new method must pass."""
import io
from types import SimpleNamespace

import pytest
import torch

from models import METHODS, METHOD_OPTIONS, method_of, not_in_fingerprint
from utils.options import not_in_recipe
from utils.optim import WarmupCosineLR
from utils.config import ConfigError
from utils.evaluation import collect_maps
from utils.optim import OPTIMIZERS
from utils.results import save_checkpoint
from utils.training import data_fingerprint, fingerprint, saved_state

BASE = dict(backbone="resnet18", weights="none", layers=("layer1", "layer2", "layer3"), encoder_taps="preact",
            image_size=64, crop_size=0, target="randn", target_p=2.0, nu=1e-3, radius_init=1e-5,
            decoder_activation="gelu", loss_form="global", recompute=False, hm_factor=0.0, encoder_lr=1e-5,
            optimizer="adamw", lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-5, adam_eps=1e-8, amsgrad=True,
            lr_drop_at=0.5, lr_drop_gamma=0.2, target_norm=(1.0,), lr_schedule="step", warmup_iters=100, final_lr=2e-4,
            vit="base", bottleneck_dropout=0.2)
SIZES = {"uniad": dict(backbone="efficientnet_lite0", image_size=128, encoder_taps="standard"),
         "dinomaly": dict(vit="small", image_size=56, optimizer="stable_adamw", lr_schedule="warmup_cosine",
                          warmup_iters=3, lr_drop_at=0.0, hm_factor=0.1)}  # random ViT-S: a 4 x 4 token grid


def config(name, **changes):
    return SimpleNamespace(**{**BASE, **SIZES.get(name, {}), "method": name, **changes})


def built(name):
    cfg = config(name)
    method = method_of(cfg)
    torch.manual_seed(0)
    encoder = method.build_encoder(cfg)
    model = method.build_model(cfg, encoder, 1.0, torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(1))
    batch = encoder(images) if method.trains_on == "features" else {"image": images}
    return cfg, method, encoder, model, batch


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_the_one_face(name, one_thread):
    cfg, method, encoder, model, batch = built(name)
    model.train()
    if method.before_training is not None:  # NoCo's mean target reads batches; the default target needs none
        assert model.target.any()
    loss = model.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

    model.eval()
    maps = model.anomaly_map(batch)  # the one map contract: float32 at the input size, before the blur
    assert maps.shape == (2, cfg.image_size, cfg.image_size) and maps.dtype == torch.float32
    masks = torch.zeros(2, cfg.image_size, cfg.image_size, dtype=torch.bool)
    collected = collect_maps(model, [(batch, torch.tensor([0, 1]), masks)],
                             lambda m, b: method.head_input(m, b, "bottleneck"))
    assert torch.equal(collected.maps, maps) and collected.features.dim() == 4

    optimizer, scheduler = model.configure_optimizers(cfg, 10)
    in_groups = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(trainable)  # each trainable parameter once
    assert type(optimizer) is OPTIMIZERS[cfg.optimizer] and optimizer.defaults["amsgrad"] and scheduler is not None

    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    saved.seek(0)
    again = method.build_model(cfg, encoder, 1.0, torch.Generator().manual_seed(5))
    again.load_state_dict(torch.load(saved, weights_only=True))
    assert torch.equal(again.eval().anomaly_map(batch), maps)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_fingerprint_changes_with_the_methods_own_options_only(name):
    method = METHODS[name]
    cfg = vars(config(name))
    ignore = not_in_fingerprint(method)
    key = fingerprint(cfg, ignore)
    assert fingerprint(dict(reversed(list(cfg.items()))), ignore) == key  # stable under order
    for option in METHOD_OPTIONS:
        other = fingerprint({**cfg, option: "changed"}, ignore)
        assert (other != key) == (option in method.own_options), option


def test_an_unknown_method_or_another_methods_option_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="--method: expected one of noco, revdist, recontrast, uniad"):
        method_of(config("patchcore"))
    with pytest.raises(ConfigError, match="--hm_factor: an option of recontrast, dinomaly; --method revdist does not"):
        method_of(config("revdist"), given={"hm_factor"})
    with pytest.raises(ConfigError, match="--recompute: an option of revdist, recontrast; --method noco"):
        method_of(config("noco"), given={"recompute", "lr"})
    with pytest.raises(ConfigError, match="multiple of 32"):
        method_of(config("revdist", image_size=80))


def test_the_data_fingerprint_reads_file_names_and_sizes_not_the_folder(tmp_path):
    def dataset(folder, sizes):
        folder.mkdir(parents=True)
        for index, size in enumerate(sizes):
            (folder / f"{index:03d}.png").write_bytes(b"x" * size)
        return SimpleNamespace(class_name="brick", samples=[(p, 0, None) for p in sorted(folder.iterdir())])

    original = data_fingerprint([dataset(tmp_path / "a" / "brick", [10, 20])])
    assert data_fingerprint([dataset(tmp_path / "moved" / "brick", [10, 20])]) == original
    assert data_fingerprint([dataset(tmp_path / "other" / "brick", [10, 21])]) != original


def test_dinomaly_reads_its_vit_not_the_backbone_and_its_head_reads_the_bottleneck(one_thread):
    with pytest.raises(ConfigError, match="--backbone: --method dinomaly does not read it .its encoder is --vit"):
        method_of(config("dinomaly"), given={"backbone"})
    with pytest.raises(ConfigError, match="multiple of 14, got 64"):
        method_of(config("dinomaly", image_size=64))
    with pytest.raises(ConfigError, match="--vit: expected one of small, base, large"):
        method_of(config("dinomaly", vit="huge"))
    assert "backbone" in not_in_fingerprint(METHODS["dinomaly"]) - not_in_fingerprint(METHODS["noco"])
    cfg = vars(config("dinomaly"))
    ignore = not_in_fingerprint(METHODS["dinomaly"])
    assert fingerprint({**cfg, "backbone": "resnet18"}, ignore) == fingerprint(cfg, ignore)
    cfg, method, encoder, model, batch = built("dinomaly")
    assert method.grad_clip == 0.1 and method.trains_on == "images" and model.hm_factor == 0.1
    model.eval()
    bottleneck, deepest = (method.head_input(model, batch, where) for where in ("bottleneck", "encoder"))
    assert bottleneck.shape == deepest.shape == (2, 384, 4, 4)  # (B, C, h, w): what a CADA head's conv reads
    torch.testing.assert_close(bottleneck, model.bottleneck_features(batch), rtol=0, atol=0)
    assert not torch.allclose(bottleneck, deepest)
    optimizer, scheduler = model.configure_optimizers(cfg, 10)
    assert isinstance(scheduler, WarmupCosineLR) and optimizer.param_groups[0]["lr"] == 0.0  # warm-up from 0


def options():
    import train_mvtec  # its option table (the script's work runs only as __main__)
    return train_mvtec.OPTIONS


def recipe_config(name, **changes):
    return {**vars(config(name)), "setting": "unified", "epochs": 50, "iters": 100, "cache_features": True,
            "cache_dtype": "float32", "amp": False, **changes}


@pytest.mark.parametrize("name, same, other", [
    ("revdist", {"epochs": 7, "warmup_iters": 5, "final_lr": 1.0}, {"iters": 101}),  # unified, step drop at 0.5
    ("revdist", {"lr_drop_gamma": 0.5, "lr_drop_at": 0.0, "cache_features": False},
     {"lr_drop_at": 0.3, "cache_dtype": "float16"}),
    ("dinomaly", {"lr_drop_gamma": 0.5, "cache_dtype": "float16", "epochs": 3}, {"warmup_iters": 4, "final_lr": 1.0}),
])
def test_the_fingerprint_is_the_recipe_actually_trained(name, same, other):
    """Options the configuration does not use (the other setting's length, an unused schedule's settings, the
    cache dtype where nothing is cached) leave the key alone; each used one changes it."""
    # (--cache_features is the script's NOT_TRAINING)
    ignore = lambda cfg: not_in_recipe(options(), METHODS[name], cfg) | {"cache_features"}  # noqa: E731
    base = recipe_config(name, **({"lr_drop_at": 0.0} if "lr_drop_at" in same else {}))
    key = fingerprint(base, ignore)
    assert fingerprint({**base, **same}, ignore) == key
    for option, value in other.items():
        assert fingerprint({**base, option: value}, ignore) != key, option
    separate = {**base, "setting": "separate"}  # the separate setting counts epochs, not iters
    assert fingerprint({**separate, "iters": 7}, ignore) == fingerprint(separate, ignore)
    assert fingerprint({**separate, "epochs": 7}, ignore) != fingerprint(separate, ignore)


def test_checkpoint_reuse_follows_the_recipe_old_keys_included(tmp_path):
    """--checkpoint reuses a unified model asked for with other --epochs, and one saved by the previous version
    (its key hashed every option but the method's others) when the recipe is the same; another --lr is refused."""
    ignore = lambda cfg: not_in_recipe(options(), METHODS["revdist"], cfg)  # noqa: E731
    saved = recipe_config("revdist")
    old_key = fingerprint(saved, not_in_fingerprint(METHODS["revdist"]))
    assert old_key != fingerprint(saved, ignore)
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint({"model": {}, "training_config": saved, "fingerprint": old_key},
                    tmp_path / "checkpoints" / "unified.pt")
    assert saved_state((None, tmp_path), "unified", {**saved, "epochs": 3}, ignore) is not None
    with pytest.raises(ValueError, match=r"differs in \['lr'\]"):
        saved_state((None, tmp_path), "unified", {**saved, "epochs": 3, "lr": 0.5}, ignore)
