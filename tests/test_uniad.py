"""UniAD against the brief (section 4): the parameter count, the official initialisation, the neighbour
mask, shapes on a random-init EfficientNet-B4 (and Lite0), the feature jitter, position embeddings on
queries/keys only (column half first), and learning on tiny generated token grids."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from models.backbones import build_encoder
from models.cada import Alignment
from models.uniad import UNIAD_LAYERS, TokenEncoder, UniAD, neighbour_mask, token_channels
from models import uniad
from utils.optim import optimizer_settings
from utils.training import fit

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

OFFICIAL = optimizer_settings(lr=1e-4, weight_decay=1e-4, amsgrad=False)  # UniAD's preset


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def small(**kwargs):
    """A 4x4-grid model with a 3x3 neighbourhood, reading one map "x" of 16 channels."""
    args = dict(in_channels=16, hidden=32, grid=(4, 4), encoder_layers=2, decoder_layers=2, heads=4, ffn=64,
                neighbour_size=3, layers=("x",))
    args.update(kwargs)
    return UniAD(**args)


def expected_barred(h, w, size, r, c):
    """The positions token (r, c) must be barred from, listed by hand-rolled loops."""
    half = size // 2
    return {(r2, c2) for r2 in range(h) for c2 in range(w) if abs(r2 - r) <= half and abs(c2 - c) <= half}


def barred(mask, h, w, r, c):
    row = mask[r * w + c]
    return {divmod(k, w) for k in range(h * w) if row[k]}


def check_mask(mask, h, w, size):
    assert mask.dtype == torch.bool and mask.shape == (h * w, h * w)
    for r in range(h):
        for c in range(w):
            assert barred(mask, h, w, r, c) == expected_barred(h, w, size, r, c), (r, c)


@pytest.fixture(scope="module")
def default_model():
    torch.manual_seed(0)
    return UniAD()


@pytest.fixture(scope="module")
def features():
    """The UniAD taps of a random-init efficientnet_b4 on 2 random 224 px images."""
    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_b4", "none", layers=UNIAD_LAYERS)
    return encoder(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)))


# ---- parameters ---------------------------------------------------------------------------------

def test_parameter_count_at_the_defaults(default_model):
    model = default_model
    assert count(model) == 7_717_392
    assert round(count(model) / 1e6, 2) == 7.72  # the brief's 7.72 M
    assert count(model.input_proj) == 69_888 and count(model.output_proj) == 69_904
    assert model.row_embed.shape == (14, 128) and model.col_embed.shape == (14, 128)
    assert [count(layer) for layer in model.encoder] == [789_760] * 4
    assert [count(layer) for layer in model.decoder] == [1_103_616] * 4
    assert [layer.queries.shape for layer in model.decoder] == [(196, 256)] * 4  # counted: 4 x 50,176
    assert count(model.decoder_norm) == 512
    assert count(model.encoder[0].attention.attention) == 263_168
    assert count(model.encoder[0].ffn) == 525_568
    # post-norm: 2 per encoder layer, 3 per decoder layer, the final decoder norm, no final encoder norm
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 2 * 4 + 3 * 4 + 1


def test_xavier_init_and_architecture_settings(default_model):
    model = default_model
    attention = model.encoder[0].attention.attention
    assert attention.num_heads == 8 and attention.embed_dim == 256 and attention.dropout == 0.1
    assert model.encoder[0].ffn.linear1.out_features == 1024
    bound = (6 / (256 + 1024)) ** 0.5  # xavier_uniform of the FFN's first weight
    weight = model.encoder[0].ffn.linear1.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.95 * bound
    assert uniad.GRAD_CLIP == 0.1


def check_official_init(model):
    """The official initialiser (models/initializer.py, xavier_uniform) and uniad.py's tables: every
    Linear Xavier-uniform with zero bias, the attentions' input projections too (nn.MultiheadAttention's
    own init), the position tables U(0, 1), the learned queries N(0, 1)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 + 4 * 3 + 4 * 4  # projections; per layer the FFN's two and each attention's output
    for weight, bias in [(m.weight, m.bias) for m in linears] + [
            (m.in_proj_weight, m.in_proj_bias) for m in model.modules() if isinstance(m, nn.MultiheadAttention)]:
        bound = (6 / sum(weight.shape)) ** 0.5
        assert torch.equal(bias, torch.zeros_like(bias))
        assert bound >= weight.abs().max() > 0.9 * bound, weight.shape
    for table in (model.row_embed, model.col_embed):
        assert table.min() >= 0 and table.max() < 1 and abs(table.mean().item() - 0.5) < 0.05
    queries = torch.cat([layer.queries.flatten() for layer in model.decoder])
    assert abs(queries.mean().item()) < 0.02 and abs(queries.std().item() - 1) < 0.02


def test_initialisation_is_the_official_one(default_model):
    check_official_init(default_model)
    torch.manual_seed(0)
    pytorch_default = UniAD()  # what PyTorch's own init would give: every check fails
    for module in pytorch_default.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
    with pytest.raises(AssertionError):
        check_official_init(pytorch_default)
    xavier_everywhere = UniAD()  # the previous init: xavier on every parameter with dim > 1
    with torch.no_grad():
        for parameter in xavier_everywhere.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
    with pytest.raises(AssertionError):
        check_official_init(xavier_everywhere)


# The official UniAD module (zhiyuanyou/UniAD a5b9d9d, models/reconstructions/uniad.py, the MVTec-AD config: 272
# channels, 14 x 14, learned positions, xavier_uniform initializer) built alone after torch.manual_seed(0): the first
# two values of some of its parameters, by our names. Any other construction or initialisation order changes them.
OFFICIAL_SEED_0 = {
    "row_embed": [0.10995042324066162, 0.07707703113555908],
    "encoder.0.attention.attention.in_proj_weight": [-0.07311488687992096, -0.06034151837229729],
    "encoder.3.ffn.linear1.weight": [-0.031021006405353546, 0.050704460591077805],
    "decoder.0.queries": [1.0981651544570923, 0.10618294775485992],
    "decoder.2.to_previous.attention.out_proj.weight": [0.03788281977176666, -0.08163917064666748],
    "output_proj.weight": [-0.07376371324062347, 0.0021383336279541254],
}


def test_layers_start_as_copies_of_one_layer_like_the_official_model(default_model):
    """The official code builds one encoder layer and one decoder layer and deep-copies them (_get_clones), then
    re-draws every nn.Linear (Xavier): the attentions' input projections and the learned queries stay equal in
    every layer, the Linear layers do not."""
    state = default_model.state_dict()

    def per_layer(stack, name, count=4):
        return [state[f"{stack}.{i}.{name}"] for i in range(count)]

    same = [("encoder", "attention.attention.in_proj_weight"), ("decoder", "queries"),
            ("decoder", "to_memory.attention.in_proj_weight"), ("decoder", "to_previous.attention.in_proj_weight")]
    for stack, name in same:
        first, *others = per_layer(stack, name)
        assert all(torch.equal(first, other) for other in others), (stack, name)
    redrawn = [("encoder", "attention.attention.out_proj.weight"), ("encoder", "ffn.linear1.weight"),
               ("decoder", "to_previous.attention.out_proj.weight"), ("decoder", "ffn.linear2.weight")]
    for stack, name in redrawn:
        first, *others = per_layer(stack, name)
        assert not any(torch.equal(first, other) for other in others), (stack, name)
    encoder = default_model.encoder  # copies, not one shared tensor: training moves them apart
    assert encoder[0].attention.attention.in_proj_weight is not encoder[1].attention.attention.in_proj_weight
    assert not torch.equal(state["encoder.0.attention.attention.in_proj_weight"],
                           state["decoder.0.to_memory.attention.in_proj_weight"])
    for name, first_two in OFFICIAL_SEED_0.items():
        assert torch.allclose(state[name].flatten()[:2], torch.tensor(first_two), rtol=0, atol=1e-7), name


# ---- the neighbour mask -------------------------------------------------------------------------

def test_mask_on_a_4x4_grid_with_neighbourhood_3():
    mask = neighbour_mask(4, 4, 3)
    assert barred(mask, 4, 4, 0, 0) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert barred(mask, 4, 4, 1, 1) == {(r, c) for r in range(3) for c in range(3)}
    assert barred(mask, 4, 4, 2, 1) == {(r, c) for r in range(1, 4) for c in range(3)}
    assert barred(mask, 4, 4, 3, 3) == {(2, 2), (2, 3), (3, 2), (3, 3)}
    assert barred(mask, 4, 4, 0, 2) == {(r, c) for r in range(2) for c in range(1, 4)}
    check_mask(mask, 4, 4, 3)
    assert not mask.all(dim=1).any()


def test_mask_on_the_14x14_grid_with_neighbourhood_7():
    mask = neighbour_mask(14, 14, 7)
    sums = mask.sum(dim=1).reshape(14, 14)
    assert sums[7, 7] == 49 and sums[3:11, 3:11].eq(49).all()  # interior: the whole 7x7 block
    assert sums[0, 0] == 16 and sums[0, 7] == 28 and sums[2, 2] == 36
    assert torch.equal(mask, mask.T)
    assert not mask.all(dim=1).any()
    check_mask(mask, 14, 14, 7)
    check_mask(neighbour_mask(5, 9, 3), 5, 9, 3)  # rectangular grids: rows and columns not swapped


@pytest.mark.parametrize("broken", ["none", "inverted", "self_allowed", "larger", "self_only", "swapped_grid"])
def test_broken_masks_are_detected(broken):
    """check_mask, which the mask tests use, rejects a missing or wrong mask."""
    mask = neighbour_mask(4, 4, 3)
    wrong = {"none": torch.zeros_like(mask), "inverted": ~mask,
             "self_allowed": mask & ~torch.eye(16, dtype=torch.bool),
             "larger": neighbour_mask(4, 4, 5), "self_only": neighbour_mask(4, 4, 1)}
    h, w, candidate = (2, 3, neighbour_mask(3, 2, 3)) if broken == "swapped_grid" else (4, 4, wrong.get(broken))
    with pytest.raises(AssertionError):
        check_mask(candidate, h, w, 3)


def test_mask_needs_a_grid_larger_than_the_neighbourhood():
    assert neighbour_mask(4, 4, 7).all()  # on 4x4 a 7x7 neighbourhood bars everything
    with pytest.raises(ValueError, match="larger than the neighbourhood"):
        small(neighbour_size=7)
    with pytest.raises(ValueError, match="odd"):
        neighbour_mask(6, 6, 4)
    assert small(neighbour_size=None).mask is None


def capture_attentions(model):
    """Hooks recording query, key, value and attn_mask of every nn.MultiheadAttention call, in order."""
    calls, handles = [], []

    def hook(module, args, kwargs):
        calls.append((module, kwargs["query"], kwargs["key"], kwargs["value"], kwargs["attn_mask"]))

    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return calls, handles


def test_every_attention_gets_the_mask():
    torch.manual_seed(0)
    model = small(encoder_layers=3, decoder_layers=2).eval()
    calls, handles = capture_attentions(model)
    model.anomaly_map({"x": torch.randn(2, 16, 4, 4)})
    for handle in handles:
        handle.remove()
    assert len(calls) == 3 + 2 * 2  # encoder self-attention, both decoder attentions
    for _, _, _, _, mask in calls:
        check_mask(mask, 4, 4, 3)


# ---- position embeddings: queries and keys only ---------------------------------------------------

def test_position_embedding_is_added_to_queries_and_keys_never_to_values():
    torch.manual_seed(0)
    model = small(encoder_layers=2, decoder_layers=3).eval()
    with torch.no_grad():  # make the tables clearly non-zero and distinct per position
        model.row_embed.normal_()
        model.col_embed.normal_()
    pos = model.position_embedding().detach()
    # the official PositionEmbeddingLearned: position (r, c) -> [col_embed[c], row_embed[r]]
    assert torch.equal(pos[1 * 4 + 2], torch.cat([model.col_embed[2], model.row_embed[1]]).detach())
    calls, handles = capture_attentions(model)
    layer_outputs = {}
    for i, layer in enumerate(model.decoder):
        handles.append(layer.register_forward_hook(lambda m, a, out, i=i: layer_outputs.__setitem__(i, out)))
    encoder_inputs = []
    for layer in model.encoder:
        handles.append(layer.register_forward_pre_hook(lambda m, args: encoder_inputs.append(args[0])))
    x = {"x": torch.randn(2, 16, 4, 4)}
    with torch.no_grad():
        memory = model.encode(model.tokens(x).flatten(2).transpose(1, 2))
        calls.clear()
        encoder_inputs.clear()
        model.reconstruct(x)
    for handle in handles:
        handle.remove()

    def close(a, b):
        return torch.allclose(a, b, atol=1e-5)

    encoder_calls, decoder_calls = calls[:2], calls[2:]
    for (module, q, k, v, _), layer_input in zip(encoder_calls, encoder_inputs):
        assert torch.equal(v, layer_input)  # the value is the bare layer input
        assert close(q - v, pos.expand_as(q)) and close(k - v, pos.expand_as(k))
    for i, layer in enumerate(model.decoder):
        (_, q1, k1, v1, _), (_, q2, k2, v2, _) = decoder_calls[2 * i: 2 * i + 2]
        assert close(v1, memory) and close(k1 - v1, pos.expand_as(k1))  # attention 1: K/V = encoder memory
        assert close(q1 - pos, layer.queries.detach().expand_as(q1))  # its own learned queries
        previous = memory if i == 0 else layer_outputs[i - 1]  # attention 2: K/V = previous decoder output
        assert close(v2, previous) and close(k2 - v2, pos.expand_as(k2))
        assert not close(q2 - pos, q1 - pos)  # attention 2's queries are attention 1's output


def test_position_tables_change_the_reconstruction():
    torch.manual_seed(0)
    model = small().eval()
    x = {"x": torch.randn(2, 16, 4, 4)}
    before = model.anomaly_map(x)
    with torch.no_grad():
        model.col_embed.add_(torch.randn_like(model.col_embed))
    assert not torch.allclose(before, model.anomaly_map(x))


# ---- shapes on the real encoder --------------------------------------------------------------------

def test_encoder_taps_are_the_brief_blocks(features):
    assert [tuple(features[k].shape) for k in UNIAD_LAYERS] == [
        (2, 24, 112, 112), (2, 32, 56, 56), (2, 56, 28, 28), (2, 160, 14, 14)]  # strides 2/4/8/16


def test_shapes_at_224_px(default_model, features):
    model = default_model.eval()
    tokens = model.tokens(features)
    assert tokens.shape == (2, 272, 14, 14)
    first = F.interpolate(features["layer0"], size=(14, 14), mode="bilinear", align_corners=True)
    assert torch.equal(tokens[:, :24], first) and torch.equal(tokens[:, -160:], features["layer3"])
    amap = model.anomaly_map(features)
    assert amap.shape == (2, 224, 224) and amap.dtype == torch.float32 and (amap >= 0).all()
    with torch.no_grad():
        reconstructed, clean = model.reconstruct(features)
    residual = (reconstructed - clean).norm(dim=-1).reshape(2, 14, 14)
    # per-token L2 residual, x16 bilinear with align_corners=True (the corner pixels are the corner tokens)
    upsampled = F.interpolate(residual[:, None], size=(224, 224), mode="bilinear", align_corners=True)[:, 0]
    assert torch.allclose(amap, upsampled, atol=1e-5)
    assert torch.allclose(amap[:, 0, 0], residual[:, 0, 0]) and torch.allclose(amap[:, -1, -1], residual[:, -1, -1])
    memory = model.bottleneck_features(features)
    assert memory.shape == (2, 256, 14, 14)
    loss = model.loss(features)
    assert loss.shape == () and loss.dtype == torch.float32
    model.train()
    assert torch.equal(model.bottleneck_features(features), memory) and model.training  # eval inside, mode kept
    model.eval()
    with pytest.raises(ValueError, match="token grid"):
        model.tokens({k: v[..., :-2, :-2] for k, v in features.items()})


def test_lite0_tokens_the_model_and_a_cada_head_on_its_memory():
    assert (token_channels("efficientnet_b4"), token_channels("efficientnet_lite0")) == (272, 192)
    with pytest.raises(ValueError, match="UniAD reads EfficientNet stages"):
        token_channels("resnet18")
    torch.manual_seed(0)
    encoder = TokenEncoder(build_encoder("efficientnet_lite0", "none", UNIAD_LAYERS))
    tokens = encoder(torch.randn(2, 3, 128, 128))
    assert tokens["tokens"].shape == (2, 192, 8, 8)
    model = UniAD(token_channels("efficientnet_lite0"), grid=(8, 8), layers=("tokens",)).eval()
    assert model.anomaly_map(tokens).shape == (2, 128, 128)
    memory = model.bottleneck_features(tokens)
    assert memory.shape == (2, 256, 8, 8)
    u, gamma = Alignment("cada", memory.shape[1]).eval().statistics(memory)
    assert u.shape == gamma.shape == (2,)


# ---- feature jitter ---------------------------------------------------------------------------------

def capture_projection_input(model):
    seen = []
    handle = model.input_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    return seen, handle


def varied_tokens():
    """(2, 272, 14, 14) with per-token norms spread over two orders of magnitude."""
    generator = torch.Generator().manual_seed(3)
    scale = torch.exp(torch.empty(2, 1, 14, 14).uniform_(-2.3, 2.3, generator=generator))
    return {"x": torch.randn(2, 272, 14, 14, generator=generator) * scale}


def test_no_jitter_in_eval_mode():
    torch.manual_seed(0)
    model = UniAD(encoder_layers=1, decoder_layers=1, layers=("x",)).eval()
    batch = varied_tokens()
    seen, handle = capture_projection_input(model)
    assert torch.equal(model.loss(batch), model.loss(batch))
    assert torch.equal(model.anomaly_map(batch), model.anomaly_map(batch))
    handle.remove()
    clean = model.tokens(batch).flatten(2).transpose(1, 2)
    assert len(seen) == 4 and all(torch.equal(s, clean) for s in seen)


def test_jitter_in_train_mode_scales_with_the_token_norm():
    torch.manual_seed(0)
    model = UniAD(encoder_layers=1, decoder_layers=1, layers=("x",)).train()
    batch = varied_tokens()
    seen, handle = capture_projection_input(model)
    outputs = []
    out_handle = model.output_proj.register_forward_hook(lambda m, a, out: outputs.append(out))
    loss = model.loss(batch)
    handle.remove()
    out_handle.remove()
    clean = model.tokens(batch).flatten(2).transpose(1, 2)
    noise = seen[0] - clean
    assert not torch.allclose(seen[0], clean)
    ratio = noise / (clean.norm(dim=-1, keepdim=True) / 272)  # should be 20 * N(0, 1)
    assert abs(ratio.std().item() - 20) < 0.5 and abs(ratio.mean().item()) < 0.5
    per_token = ratio.std(dim=-1)  # 272 draws per token: ~4 % standard error
    assert (per_token - 20).abs().max() < 5 and abs(per_token.mean().item() - 20) < 0.5
    assert torch.allclose(loss, F.mse_loss(outputs[0], clean))  # the target is the clean tokens
    no_jitter = UniAD(encoder_layers=1, decoder_layers=1, layers=("x",), jitter_prob=0.0).train()
    seen, handle = capture_projection_input(no_jitter)
    no_jitter.loss(batch)
    handle.remove()
    assert torch.equal(seen[0], clean)


# ---- optimiser and learning ------------------------------------------------------------------------

def test_configure_optimizers(default_model):
    optimizer, scheduler = default_model.configure_optimizers(OFFICIAL, total_iters=100)
    assert isinstance(optimizer, torch.optim.AdamW) and scheduler is None
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.9, 0.999), 1e-4)
    assert sum(p.numel() for p in group["params"]) == 7_717_392


C, GRID = 16, 6


def normal_tokens(n, generator, pattern, basis):
    """Textures: a fixed per-position pattern plus a per-image 2-d latent shared by every position."""
    z = torch.randn(n, 2, generator=generator)
    return (pattern + torch.einsum("ck,nk->nc", basis, z)[:, :, None, None]
            + 0.05 * torch.randn(n, C, GRID, GRID, generator=generator))


def test_learns_and_localises_anomalous_tokens():
    generator = torch.Generator().manual_seed(0)
    pattern, basis = torch.randn(C, GRID, GRID, generator=generator), torch.randn(C, 2, generator=generator)
    torch.manual_seed(0)
    model = UniAD(in_channels=C, hidden=32, grid=(GRID, GRID), encoder_layers=2, decoder_layers=2, heads=4, ffn=64,
                  neighbour_size=3, layers=("x",))
    optimizer, _ = model.configure_optimizers(optimizer_settings(lr=1e-3, weight_decay=1e-4, amsgrad=False), 200)
    held_out = {"x": normal_tokens(16, torch.Generator().manual_seed(9), pattern, basis)}
    before = model.eval().loss(held_out).item()
    fit(model, ({"x": normal_tokens(8, generator, pattern, basis)} for _ in range(200)), optimizer, None, 200,
        grad_clip=uniad.GRAD_CLIP, show=False)
    after = model.loss(held_out).item()
    assert after < 0.5 * before, (before, after)

    # anomalies: 3 tokens per grid replaced by random directions of the same norm (off the texture)
    test_generator = torch.Generator().manual_seed(5)
    x = normal_tokens(16, test_generator, pattern, basis)
    labels = torch.zeros(16, GRID, GRID, dtype=torch.bool)
    for i in range(16):
        for k in torch.randperm(GRID * GRID, generator=test_generator)[:3].tolist():
            r, c = divmod(k, GRID)
            v = torch.randn(C, generator=test_generator)
            x[i, :, r, c] = v / v.norm() * x[i, :, r, c].norm()
            labels[i, r, c] = True
    amap = model.anomaly_map({"x": x})
    assert amap.shape == (16, 16 * GRID, 16 * GRID)
    per_token = F.avg_pool2d(amap[:, None], 16)[:, 0]
    auroc = roc_auc_score(labels.flatten().numpy(), per_token.flatten().numpy())
    assert auroc > 0.8, auroc
