"""Dinomaly (Guo et al., "Dinomaly: The Less Is More Philosophy in Multi-Class Unsupervised Anomaly
Detection", CVPR 2025; https://github.com/guojiajeremy/Dinomaly), multi-class setting, written from
the official code at commit c5c76d0 (dinomaly_mvtec_uni.py: train; models/uad.py: ViTill;
models/vision_transformer.py: bMlp, Block, LinearAttention2; utils.py: global_cosine_hm_percent,
cal_anomaly_maps, evaluation_batch, WarmCosineScheduler; optimizers/StableAdamW.py; models/vit_encoder.py:
load), not copied from it.

A frozen DINOv2 ViT with 4 registers (timm `vit_base_patch14_reg4_dinov2` by default; S and L through
ENCODERS) encodes the image; a noisy MLP bottleneck and a decoder of linear-attention Transformer
blocks reconstruct the mean of its middle layers; anomaly = where the reconstruction of two groups of
layers disagrees with the encoder (1 - cosine).

  encoder     timm ViT run block by block up to the last tapped block (the later blocks and the final
              norm are never run), under no_grad, always in eval mode. Tokens are prepared as DINOv2's
              own code does (dinov2/models/vision_transformer.py: prepare_tokens_with_masks), not by
              timm's forward: patch embedding, then the 37 x 37 position table (img_size 518) resized
              to the input's grid by bicubic interpolation with DINOv2's offset of 0.1 and no
              antialiasing (the official encoder's interpolate_offset=0.1, interpolate_antialias=False,
              models/vit_encoder.py: load), then [class token, 4 registers, patches]. At 392 px the
              grid is 28 x 28: 5 + 784 = 789 tokens of 768 channels (ViT-B).
  taps        TARGET_LAYERS: blocks 2-9 (0-based) of the 12-block S and B, blocks 4, 6, ..., 18 of the
              24-block L (dinomaly_mvtec_uni.py: train, target_layers); every token, prefix tokens too.
  bottleneck  the mean of the 8 taps -> Dropout(0.2) -> Linear(C, 4C) -> GELU -> Dropout(0.2) ->
              Linear(4C, C) -> Dropout(0.2) (bMlp(embed_dim, embed_dim * 4, embed_dim, drop=0.2)); the
              dropouts are Dinomaly's "noisy bottleneck", active in training mode only.
  decoder     8 pre-norm blocks (x + Attn(LN(x)); x + MLP(LN(x))), LayerNorm eps 1e-8, MLP ratio 4 with
              GELU, no dropout, no drop path, no layer scale; the attention is LinearAttention2: per
              head phi(q) = elu(q) + 1, phi(k) = elu(k) + 1, out_s = phi(q_s) (sum_t phi(k_t) v_t^T) /
              (phi(q_s) . sum_t phi(k_t)), qkv with bias, heads = the encoder's (6 / 12 / 16). All
              tokens, prefix tokens included, go through it; no attention mask (mask_neighbor_size=0).
  groups      loose reconstruction (ViTill.forward): the decoder outputs are listed last block first;
              group g averages taps FUSE_GROUPS[g] of the encoder and outputs FUSE_GROUPS[g] of that
              reversed decoder list: group 0 = mean of encoder blocks 2-5 against the mean of decoder
              blocks 8-5 (1-based), group 1 = blocks 6-9 against decoder blocks 4-1. The prefix tokens are
              dropped and the tokens reshaped to (B, C, h, w).

Trainable parameters (bottleneck + decoder; counted from the official modules, see the tests):
  ViT-S (384, 6 heads)    1,181,568 +  14,195,712 =  15,377,280
  ViT-B (768, 12 heads)   4,722,432 +  56,702,976 =  61,425,408   (decoder block 7,087,872)
  ViT-L (1024, 16 heads)  8,393,728 + 100,769,792 = 109,163,520
Init (dinomaly_mvtec_uni.py: train): every Linear weight truncated normal, std 0.01, cut at +-0.03,
biases 0; LayerNorms weight 1, bias 0.

Loss (utils.py: global_cosine_hm_percent), per group: 1 - cosine between the whole flattened (C*h*w)
target and output of each image, batch mean; total = the mean over the groups. Hard mining: per point
d = 1 - channel cosine (no grad); thresh = the k-th largest d, k = int(numel(d) * (1 - p)); the gradient
reaching the decoder group output at points with d < thresh is multiplied by HM_FACTOR (0.1). p rises
linearly from 0 to HM_P_FINAL (0.9) over the first HM_RAMP_ITERS (1000) iterations:
p = min(0.9 * it / 1000, 0.9), `it` counting from 0 (the model's buffer `step`, in the state dict,
incremented by each loss() in training mode).

Map (utils.py: cal_anomaly_maps): per group 1 - channel cosine, bilinearly upsampled (align_corners=True)
to the input size, mean of the 2 maps; float32, before any blur. The official evaluation
(utils.py: evaluation_batch with max_ratio=0.01, resize_mask=256) then resizes the map to 256 x 256
(bilinear, align_corners=False; masks nearest), blurs it with a 5 x 5 Gaussian of sigma 4 (zero
padding), and scores an image by the mean of its top 1 % pixels (int(256 * 256 * 0.01) = 655): the
caller's job (train_mvtec.py's DINOMALY preset: --eval_size, --blur_kernel, --blur_sigma, --top_fraction).
bottleneck_features: the bottleneck's output in eval mode (no dropout), patch tokens only, (B, C, h, w);
encoder_features: the deepest tap's patch tokens, (B, C, h, w).

Optimisation (dinomaly_mvtec_uni.py: train), built by utils.optim.build_optimizer like every model's:
StableAdamW (utils/optim.py, written from optimizers/StableAdamW.py) lr 2e-3, betas (0.9, 0.999), weight decay
1e-4, eps 1e-10, amsgrad, update clipping threshold 1 (cfg.optimizer "stable_adamw"; "adamw", "adam" too);
WarmupCosineLR (cfg.lr_schedule "warmup_cosine", utils/optim.py): lr 0 -> 2e-3 linearly over the first 100
iterations (np.linspace(0, 2e-3, 100)), then cosine from 2e-3 to 2e-4 over the remaining iterations, 2e-4 from
total_iters on; 10,000 iterations of batch 16; gradient norm clipped to 0.1 (GRAD_CLIP: the training loop
clips, the model does not; models.METHODS hands it to the loop). The other settings are train_mvtec.py's
DINOMALY preset.
Input: resize to 448 x 448, centre crop 392, ImageNet mean / std (dataset.py: get_data_transforms).

Deviations from the official code:
  - The encoder is timm's DINOv2 (weights: timm's conversion of the same Meta checkpoints, with the class
    token's position folded into the class token, timm's _convert_dinov2), not the vendored Meta code;
    its attention is timm's (scaled_dot_product_attention): the same function, float rounding apart.
    The position table is resized as DINOv2 does (above), not as timm's dynamic_img_size does (antialiased
    bicubic to the exact size, which anomalib uses). Random weights ("none") use timm's init (layer scale
    1e-5), not the official 1e-8: only random-weight runs differ.
  - Non-square inputs are accepted (the official assumes square); an input side must be a multiple of 14.
  - The hard-mining hook returns a new gradient instead of editing it in place (the same values); k is at
    least 1 (the official fails on an empty top-k).
  - Losses and maps are computed in float32 (matters only under the training loop's bf16 autocast; the
    official trains in float32).
  - StableAdamW keeps the clipping factor on the device (no host sync per tensor); WarmupCosineLR computes
    the same formula per step instead of a precomputed numpy table (differences ~1e-19).
  - The init draws from torch's trunc_normal_ (the same distribution as the official dinov1/utils.py copy,
    another random stream).
  - The frozen encoder is left out of the state dict (it is rebuilt from the same weights); a checkpoint
    lacking it loads with the current encoder.
  - Not in the model: the 256-px evaluation resize, the blur and the image score (the caller's, above).
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.optim import build_optimizer

# --- encoder (dinomaly_mvtec_uni.py: train, encoder_name; models/vit_encoder.py: load) ---
ENCODERS = {"small": "vit_small_patch14_reg4_dinov2", "base": "vit_base_patch14_reg4_dinov2",
            "large": "vit_large_patch14_reg4_dinov2"}  # dinov2reg_vit_{small,base,large}_14
DEFAULT_ENCODER = ENCODERS["base"]  # encoder_name = 'dinov2reg_vit_base_14'
TARGET_LAYERS = {12: tuple(range(2, 10)),  # S, B: target_layers = [2, 3, 4, 5, 6, 7, 8, 9]
                 24: tuple(range(4, 19, 2))}  # L: target_layers = [4, 6, 8, 10, 12, 14, 16, 18]
POS_INTERPOLATE_OFFSET = 0.1  # vit_encoder.load: interpolate_offset=0.1 (with interpolate_antialias=False)
# --- model (dinomaly_mvtec_uni.py: train; models/uad.py: ViTill) ---
FUSE_GROUPS = ((0, 1, 2, 3), (4, 5, 6, 7))  # fuse_layer_encoder = fuse_layer_decoder = [[0, 1, 2, 3], [4, 5, 6, 7]]
BOTTLENECK_RATIO = 4  # bMlp(embed_dim, embed_dim * 4, embed_dim, ...)
BOTTLENECK_DROPOUT = 0.2  # bMlp(..., drop=0.2)
DECODER_DEPTH = 8  # for i in range(8): VitBlock(...)
DECODER_MLP_RATIO = 4.0  # VitBlock(mlp_ratio=4.)
DECODER_NORM_EPS = 1e-8  # VitBlock(norm_layer=partial(nn.LayerNorm, eps=1e-8))
INIT_STD, INIT_CUT = 0.01, 0.03  # trunc_normal_(m.weight, std=0.01, a=-0.03, b=0.03)
# --- loss (dinomaly_mvtec_uni.py: train; utils.py: global_cosine_hm_percent) ---
HM_P_FINAL = 0.9  # p_final = 0.9
HM_RAMP_ITERS = 1000  # p = min(p_final * it / 1000, p_final)
HM_FACTOR = 0.1  # global_cosine_hm_percent(en, de, p=p, factor=0.1)
# --- training (dinomaly_mvtec_uni.py: train); the optimiser, schedule, input and evaluation settings are the
# DINOMALY preset of train_mvtec.py, each with its source ---
GRAD_CLIP = 0.1  # nn.utils.clip_grad_norm(trainable.parameters(), max_norm=0.1): the training loop clips


def build_vit(name=DEFAULT_ENCODER, weights="imagenet", **timm_kwargs):
    """A frozen timm DINOv2 ViT in eval mode. name: a value or key of ENCODERS; weights: "imagenet" (timm's
    pretrained DINOv2 weights, from the Hugging Face cache or hub), "none" (random init, for tests) or
    the path of a checkpoint file (Meta's dinov2_vit?14_reg4_pretrain.pth or timm's). timm_kwargs go to
    timm.create_model (tests build tiny encoders with img_size, embed_dim, num_heads, depth)."""
    name = ENCODERS.get(name, name)
    if name not in ENCODERS.values():
        raise ValueError(f"unknown Dinomaly encoder {name!r}; available: {', '.join(ENCODERS.values())} "
                         f"(or {', '.join(ENCODERS)})")
    try:
        import timm
    except ImportError:
        raise ImportError("Dinomaly's DINOv2 encoder needs timm: pip install timm") from None
    if weights == "none":
        vit = timm.create_model(name, pretrained=False, **timm_kwargs)
    elif weights == "imagenet":
        try:
            vit = timm.create_model(name, pretrained=True, **timm_kwargs)
        except Exception as err:  # no network, no cache, proxy: all end the same way for the user
            reason = (str(err).strip().splitlines() or [""])[0]
            raise FileNotFoundError(
                f"cannot get the DINOv2 weights of {name} (timm/{name}.lvd142m on the Hugging Face hub; "
                f"{type(err).__name__}: {reason}). Run once with network to fill the Hugging Face cache "
                "($HF_HOME), or pass --weights <file> (Meta's dinov2 reg4 .pth or timm's file), "
                "or run with --weights none (random init)") from None
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"--weights {weights}: no such file "
                                    "(expected imagenet, none, or a DINOv2 checkpoint file)")
        try:
            vit = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                    **timm_kwargs)
        except Exception as err:
            reason = (str(err).strip().splitlines() or [""])[0]
            raise ValueError(f"--weights {weights}: does not load into {name} "
                             f"({type(err).__name__}: {reason})") from None
    vit.eval()
    for parameter in vit.parameters():
        parameter.requires_grad_(False)
    return vit


class DinoEncoder(nn.Module):
    """A frozen timm DINOv2 ViT: forward(images) -> ([tokens of each tapped block], (h, w)), each
    (B, prefix + h*w, C) in [class, registers, patches] order. Tokens are prepared as DINOv2's code does
    (see the module docstring); only the blocks up to the last tap run."""

    def __init__(self, vit, target_layers):
        super().__init__()
        for attribute in ("patch_embed", "blocks", "pos_embed", "cls_token", "embed_dim", "num_prefix_tokens"):
            if getattr(vit, attribute, None) is None:
                raise ValueError(f"the Dinomaly encoder must be a timm VisionTransformer with a class token and "
                                 f"an absolute position table (DINOv2); it has no {attribute}")
        self.vit = vit
        self.target_layers = tuple(target_layers)
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.eval()

    def train(self, mode=True):  # frozen: always in eval mode
        return super().train(False)

    def position_table(self, grid):
        """(prefix part or None, patch part (1, h*w, C)) of the position table for a (h, w) token grid,
        resized from the table's own grid as DINOv2's interpolate_pos_encoding does: bicubic,
        scale_factor = (side + 0.1) / table side, no antialiasing, in float32; unchanged at its own grid."""
        vit = self.vit
        prefix = 0 if getattr(vit, "no_embed_class", False) else self.num_prefix_tokens
        table = vit.pos_embed
        prefix_table, patch_table = (table[:, :prefix], table[:, prefix:]) if prefix else (None, table)
        old = tuple(vit.patch_embed.grid_size)
        if tuple(grid) == old:
            return prefix_table, patch_table
        channels = patch_table.shape[-1]
        square = patch_table.float().reshape(1, old[0], old[1], channels).permute(0, 3, 1, 2)
        # int(): traced for torch.onnx, the grid's sides are tensors, which bicubic's scale factors cannot be
        scale = tuple((int(new) + POS_INTERPOLATE_OFFSET) / size for new, size in zip(grid, old))
        resized = F.interpolate(square, scale_factor=scale, mode="bicubic", antialias=False)
        if tuple(resized.shape[-2:]) != tuple(grid):
            raise ValueError(f"position table resized to {tuple(resized.shape[-2:])}, expected {tuple(grid)}")
        return prefix_table, resized.permute(0, 2, 3, 1).reshape(1, -1, channels).to(table.dtype)

    def tokens(self, images):
        """The input of the first block, (B, prefix + h*w, C), and the grid (h, w)."""
        vit = self.vit
        height, width = images.shape[-2:]
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(f"Dinomaly's input sides must be multiples of the patch size {self.patch_size[0]}, "
                             f"got {height} x {width}")
        x = vit.patch_embed.proj(images)
        grid = tuple(x.shape[-2:])
        x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
        prefix_table, patch_table = self.position_table(grid)
        prefix_tokens = [vit.cls_token.expand(x.shape[0], -1, -1)]
        if getattr(vit, "reg_token", None) is not None:
            prefix_tokens.append(vit.reg_token.expand(x.shape[0], -1, -1))
        if prefix_table is None:  # timm's DINOv2 with registers: the table covers the patches only
            x = torch.cat(prefix_tokens + [x + patch_table.to(x.dtype)], dim=1)
        else:  # the table starts with the prefix tokens' positions
            x = torch.cat(prefix_tokens + [x], dim=1) + torch.cat([prefix_table, patch_table], dim=1).to(x.dtype)
        return vit.norm_pre(x), grid

    @torch.no_grad()
    def forward(self, images):
        x, grid = self.tokens(images)
        taps = []
        for index, block in enumerate(self.vit.blocks[:self.target_layers[-1] + 1]):
            x = block(x)
            if index in self.target_layers:
                taps.append(x)
        return taps, grid


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 with biases; with `dropout` > 0 (the noisy bottleneck, bMlp) dropout on the input,
    after the GELU and on the output; the decoder's MLP has none."""

    def __init__(self, dim, hidden, dropout=0.0, input_dropout=False):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.input_dropout = input_dropout

    def forward(self, x):
        if self.input_dropout:
            x = self.drop(x)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class LinearAttention(nn.Module):
    """LinearAttention2 (models/vision_transformer.py): phi = elu + 1 on queries and keys, per head
    out_s = phi(q_s) KV / (phi(q_s) . sum_t phi(k_t)) with KV = sum_t phi(k_t) v_t^T; every token sees every
    token; no softmax, no scale."""

    def __init__(self, dim, heads):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{dim} channels do not split into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = k.transpose(-2, -1) @ v  # (B, heads, d, d)
        normaliser = q @ k.sum(dim=-2).unsqueeze(-1)  # (B, heads, L, 1)
        out = (q @ kv) / normaliser
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class DecoderBlock(nn.Module):
    """A pre-norm Transformer block with linear attention (models/vision_transformer.py: Block with
    attn=LinearAttention2, qkv_bias=True, LayerNorm eps 1e-8, MLP ratio 4, no dropout or drop path)."""

    def __init__(self, dim, heads, mlp_ratio=DECODER_MLP_RATIO, eps=DECODER_NORM_EPS):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = LinearAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def global_cosine_hm_percent(pairs, p, factor):
    """utils.py: global_cosine_hm_percent. The mean over the (target, output) pairs of the batch mean of
    1 - cosine between whole flattened maps; registers, on each output that needs a gradient, a hook
    multiplying its gradient at the easy points (d < the k-th largest d, k = int(numel * (1 - p))) by
    `factor`. Computed in float32."""
    loss = 0.0
    for target, output in pairs:
        target, output_float = target.detach().float(), output.float()
        loss = loss + (1 - F.cosine_similarity(target.flatten(1), output_float.flatten(1))).mean()
        if output.requires_grad and factor != 1:
            with torch.no_grad():
                distance = 1 - F.cosine_similarity(target, output_float)  # (B, h, w)
                k = max(1, int(distance.numel() * (1 - p)))
                threshold = torch.topk(distance.flatten(), k).values[-1]
                easy = (distance < threshold).unsqueeze(1)
                scale = torch.where(easy, float(factor), 1.0).to(output.dtype)
            output.register_hook(lambda grad, scale=scale: grad * scale)
    return loss / len(pairs)


class Dinomaly(nn.Module):
    """Dinomaly on a frozen DINOv2 encoder. `encoder`: a name of ENCODERS (built with `weights`, see
    build_vit) or a built timm DINOv2 VisionTransformer (frozen here). target_layers: the tapped blocks
    (None: TARGET_LAYERS for the encoder's depth); groups: the indices, into the taps and into the reversed
    decoder outputs, averaged per group."""

    def __init__(self, encoder=DEFAULT_ENCODER, weights="imagenet", target_layers=None, groups=FUSE_GROUPS,
                 decoder_depth=DECODER_DEPTH, bottleneck_dropout=BOTTLENECK_DROPOUT, hm_p_final=HM_P_FINAL,
                 hm_ramp_iters=HM_RAMP_ITERS, hm_factor=HM_FACTOR):
        super().__init__()
        vit = build_vit(encoder, weights) if isinstance(encoder, str) else encoder
        for parameter in vit.parameters():
            parameter.requires_grad_(False)
        depth = len(vit.blocks)
        if target_layers is None:
            if depth not in TARGET_LAYERS:
                raise ValueError(f"no default Dinomaly taps for a {depth}-block encoder (known: "
                                 f"{', '.join(map(str, TARGET_LAYERS))} blocks); pass target_layers")
            target_layers = TARGET_LAYERS[depth]
        target_layers = tuple(int(i) for i in target_layers)
        if list(target_layers) != sorted(set(target_layers)) or not 0 <= target_layers[0] <= target_layers[-1] < depth:
            raise ValueError(f"target_layers must be increasing block indices below {depth}, got {target_layers}")
        self.groups = tuple(tuple(int(i) for i in group) for group in groups)
        used = [i for group in self.groups for i in group]
        if not self.groups or not all(self.groups) or not 0 <= min(used) <= max(used) < min(len(target_layers),
                                                                                             decoder_depth):
            raise ValueError(f"groups {self.groups} must index the {len(target_layers)} taps and the "
                             f"{decoder_depth} decoder blocks")
        self.encoder = DinoEncoder(vit, target_layers)
        dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
        self.bottleneck = Mlp(dim, dim * BOTTLENECK_RATIO, bottleneck_dropout, input_dropout=True)
        self.decoder = nn.ModuleList(DecoderBlock(dim, heads) for _ in range(decoder_depth))
        for module in nn.ModuleList([self.bottleneck, self.decoder]).modules():  # the official init
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-INIT_CUT, b=INIT_CUT)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.hm_p_final, self.hm_ramp_iters, self.hm_factor = hm_p_final, hm_ramp_iters, hm_factor
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_state_dict_post_hook(_drop_encoder)
        self.register_load_state_dict_pre_hook(_keep_encoder)
        self.train()

    def hm_p(self):
        """The hard-mining fraction p at the current step: min(p_final * step / ramp, p_final)."""
        if self.hm_ramp_iters <= 0:
            return self.hm_p_final
        return min(self.hm_p_final * self.step.item() / self.hm_ramp_iters, self.hm_p_final)

    def _spatial(self, tokens, grid):
        """(B, prefix + h*w, C) -> the patch tokens as (B, C, h, w)."""
        patches = tokens[:, self.encoder.num_prefix_tokens:]
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, *grid)

    def _pairs(self, images):
        """[(encoder group mean, decoder group mean)] per group, each (B, C, h, w)."""
        taps, grid = self.encoder(images)
        x = self.bottleneck(torch.stack(taps, dim=1).mean(dim=1))
        decoded = []
        for block in self.decoder:
            x = block(x)
            decoded.append(x)
        decoded = decoded[::-1]  # ViTill: de_list[::-1], the last decoder block first
        return [(self._spatial(torch.stack([taps[i] for i in group], dim=1).mean(dim=1), grid),
                 self._spatial(torch.stack([decoded[i] for i in group], dim=1).mean(dim=1), grid))
                for group in self.groups]

    def loss(self, batch):
        p = self.hm_p()
        if self.training:
            self.step += 1
        return global_cosine_hm_percent(self._pairs(batch["image"]), p, self.hm_factor)

    @torch.no_grad()
    def anomaly_map(self, batch):
        """(B, H, W) float32 at the input size, before any blur: the mean over the groups of 1 - channel
        cosine, each bilinearly upsampled (align_corners=True)."""
        images = batch["image"]
        maps = [F.interpolate((1 - F.cosine_similarity(target.float(), output.float())).unsqueeze(1),
                              size=tuple(images.shape[-2:]), mode="bilinear", align_corners=True)
                for target, output in self._pairs(images)]
        return torch.cat(maps, dim=1).mean(dim=1)

    @torch.no_grad()
    def bottleneck_features(self, batch):
        """The bottleneck's output tokens in eval mode (no dropout), class and register tokens dropped:
        (B, C, h, w), 768 x 28 x 28 for ViT-B at 392 px."""
        taps, grid = self.encoder(batch["image"])
        was_training = self.bottleneck.training
        self.bottleneck.eval()
        try:
            x = self.bottleneck(torch.stack(taps, dim=1).mean(dim=1))
        finally:
            self.bottleneck.train(was_training)
        return self._spatial(x, grid)

    @torch.no_grad()
    def encoder_features(self, batch):
        """The deepest tapped encoder block's patch tokens, (B, C, h, w): an alignment head's input when it
        reads the frozen encoder instead of the bottleneck (CADA sec. 3.3)."""
        taps, grid = self.encoder(batch["image"])
        return self._spatial(taps[-1], grid)

    def configure_optimizers(self, cfg, total_iters):
        """utils.optim.build_optimizer over the bottleneck and decoder: Dinomaly's settings are cfg.optimizer
        "stable_adamw" and cfg.lr_schedule "warmup_cosine" (0 -> cfg.lr over cfg.warmup_iters, cosine to
        cfg.final_lr at total_iters, stepped once per iteration; cfg.lr_drop_at 0). The loop clips the
        gradient norm to GRAD_CLIP (models.METHODS["dinomaly"].grad_clip)."""
        return build_optimizer([p for p in self.parameters() if p.requires_grad], cfg, total_iters)


def _drop_encoder(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        del state_dict[key]


def _keep_encoder(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    for key, value in module.encoder.state_dict(prefix=prefix + "encoder.", keep_vars=True).items():
        state_dict.setdefault(key, value)
