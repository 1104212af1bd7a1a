"""UniAD (You et al., "A Unified Model for Multi-class Anomaly Detection", NeurIPS 2022;
https://github.com/zhiyuanyou/UniAD), written from its paper and its official code.

A transformer reconstructs the frozen encoder's feature tokens; anomaly = where it fails.

The model does not own the encoder: a batch is the frozen encoder's feature dict for
UNIAD_LAYERS = ("layer0", "layer1", "layer2", "layer3") of efficientnet_b4, timm's TF-ported
tf_efficientnet_b4 with the official model's paddings (models.backbones.build_encoder(..., taps="standard")).
These are the ends of timm's block groups 0, 1, 2 and 4 (2, 4, 4 and 6 blocks; group 3, 6 blocks at
stride 16 with 112 ch, is not tapped), i.e. the flat block indices 1, 5, 9 and 21 of the official
lukemelas EfficientNet-B4: strides 2/4/8/16, 24/32/56/160 channels (112^2, 56^2, 28^2, 14^2 at
224 px). With efficientnet-pytorch's efficientnet-b4-6ed6700e.pth (UniAD's weights) loaded, they equal
the official encoder's outputs (checked to 2.4e-7 at 224, 256 and 320 px). efficientnet_lite0's
taps give 16/24/40/112 = 192 channels (token_channels). The input image is 16x the last (deepest) map's
size.

  tokens    each map bilinearly resized (align_corners=True) to the deepest map's size, concatenated
            in layer order -> (B, 272, h, w), 272 x 14 x 14 at 224 px; a token per position.
  jitter    training mode only, applied to the whole batch with probability `jitter_prob` (1):
            token + N(0, 1) * (||token||_2 / C) * `jitter_scale` (20), C = 272, per token, before
            the input projection. The reconstruction target is always the clean tokens.
  in/out    Linear 272 -> 256 ... Linear 256 -> 272.
  position  learned: a table of h rows x 128 and one of w columns x 128; the position (r, c) gets
            [col_table[c], row_table[r]] (column half first, as the official
            PositionEmbeddingLearned) -> 256. Added to the queries and keys of every attention, never
            to the values.
  encoder   4 post-norm layers (x = LN(x + Drop(Attn(q=x+pos, k=x+pos, v=x))); x = LN(x + FFN(x))),
            8 heads, FFN 256 -> 1024 -> 256 with ReLU, dropout 0.1 (on the attention weights, after
            each sublayer and inside the FFN); no final encoder norm (post-norm). Output: the memory.
  decoder   4 post-norm layers, each with its own learned queries Q (h*w x 256). Layer l, with
            `prev` = the previous decoder layer's output (for the FIRST layer: the encoder memory):
              t = LN(Q + Drop(Attn(q=Q+pos, k=memory+pos, v=memory)))
              t = LN(t + Drop(Attn(q=t+pos, k=prev+pos, v=prev)))
              t = LN(t + FFN(t))
            then a final LayerNorm after the last layer.
  mask      neighbour_mask(h, w, 7): a token is BARRED from every token of its own 7x7 neighbourhood
            (itself included), in all three attention kinds. It needs a grid larger than the
            neighbourhood (on a grid within it every row would be barred from everything and
            attention would give NaN): the constructor refuses a mask with a fully barred row.
            neighbour_size=None disables it. The mask is a non-persistent buffer (not saved).

Trainable parameters at the defaults (272 ch, 14 x 14, 4 + 4 layers, 256-d, FFN 1024):
  input projection  272*256 + 256                                     =    69,888
  output projection 256*272 + 272                                     =    69,904
  position tables   14*128 + 14*128                                   =     3,584
  encoder layer     attention 263,168 (in 3*256*256 + 768, out 256*256 + 256)
                    + FFN 525,568 (256*1024 + 1024 + 1024*256 + 256) + 2 LayerNorms 1,024
                                                                      =   789,760  x 4 = 3,159,040
  decoder layer     2 attentions 526,336 + FFN 525,568 + 3 LayerNorms 1,536
                    + learned queries 196*256 = 50,176                 = 1,103,616  x 4 = 4,414,464
  final LayerNorm                                                      =       512
  total 7,717,392 = 7.72 M, the official model's count (without the query embeddings it would be 7.52 M).

Init, as the official code builds it (models/reconstructions/uniad.py and models/initializer.py with method
xavier_uniform): ONE encoder layer and ONE decoder layer are built and deep-copied into the 4 of each; then every
nn.Linear (projections, FFNs, the attentions' output projections) is re-drawn Xavier-uniform with zero bias, each
copy on its own. So at initialisation the 4 encoder layers share equal attention input projections
(nn.MultiheadAttention's own Xavier-uniform, zero bias), and the 4 decoder layers equal attention input projections
and learned queries (N(0, 1), nn.Embedding's default); equal values, not shared tensors. The position tables are
U(0, 1) (PositionEmbeddingLearned.reset_parameters), LayerNorms weight 1, bias 0. Everything is drawn in the
official order, so on the same seed every parameter equals the official UniAD module built alone (checked: all 132
tensors of its state dict bit-equal; tests/test_uniad.py pins some of their values).

Loss: MSE(reconstructed tokens, clean tokens), in float32.
Map: per position the L2 norm over channels of (reconstructed - clean) -> (B, h, w), bilinearly
upsampled (align_corners=True, as nn.UpsamplingBilinear2d does) x16 to the input size; float32;
no blur. It follows the module's mode (the loop calls it in eval mode: no jitter, no dropout).
bottleneck_features: the encoder memory as (B, 256, h, w), computed in eval mode without grad
(the module's mode is restored afterwards): the 256-d tokens CADA's head reads.
Optimisation: AdamW (cfg.lr, cfg.betas, cfg.weight_decay), no scheduler. GRAD_CLIP (0.1, the official
clip_max_norm) is the max gradient norm the training loop clips to after backward (its registry entry,
models.METHODS["uniad"]); the model does not clip.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.backbones import EFFICIENTNETS, tap_channels
from utils.optim import build_optimizer

UNIAD_LAYERS = ("layer0", "layer1", "layer2", "layer3")
GRAD_CLIP = 0.1  # the official config's clip_max_norm


def token_channels(backbone):
    """Channels of the concatenated UNIAD_LAYERS of an EfficientNet backbone: 272 for efficientnet_b4."""
    if backbone not in EFFICIENTNETS:
        raise ValueError(f"UniAD reads EfficientNet stages: backbone must be one of {', '.join(EFFICIENTNETS)}, "
                         f"got {backbone!r}")
    channels = tap_channels(backbone)
    return sum(channels[name] for name in UNIAD_LAYERS)


def neighbour_mask(h, w, size=7):
    """(h*w, h*w) bool, row-major positions: True where the query token (row) is BARRED from the
    key token (column), i.e. the key lies in the query's size x size neighbourhood (the query itself
    included); nn.MultiheadAttention's bool attn_mask convention. size must be odd."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"the neighbourhood size must be a positive odd number, got {size}")
    half = size // 2
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    near_rows = (rows[:, None] - rows[None, :]).abs() <= half
    near_cols = (cols[:, None] - cols[None, :]).abs() <= half
    return near_rows & near_cols


class FeedForward(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class Attention(nn.Module):
    """Multi-head attention + dropout + residual + LayerNorm (post-norm); the position embedding
    is added to the query and the key, never to the value."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, residual, query, key_value, pos, mask):
        out = self.attention(query=query + pos, key=key_value + pos, value=key_value, attn_mask=mask,
                             need_weights=False)[0]
        return self.norm(residual + self.dropout(out))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, ffn, dropout):
        super().__init__()
        self.attention = Attention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, pos, mask):
        x = self.attention(x, x, x, pos, mask)
        return self.norm(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, ffn, dropout, n_tokens):
        super().__init__()
        self.queries = nn.Parameter(nn.init.normal_(torch.empty(n_tokens, dim)))  # nn.Embedding's N(0, 1)
        self.to_memory = Attention(dim, heads, dropout)
        self.to_previous = Attention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, previous, memory, pos, mask):
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        t = self.to_memory(queries, queries, memory, pos, mask)
        t = self.to_previous(t, t, previous, pos, mask)
        return self.norm(t + self.dropout(self.ffn(t)))


def clones(layer, count):
    """`count` deep copies of one built layer (the official _get_clones): equal parameters, not shared ones."""
    return nn.ModuleList(copy.deepcopy(layer) for _ in range(count))


def concatenated_tokens(maps):
    """The maps (in order) bilinearly resized (align_corners=True) to the last one's size and
    concatenated: (B, 272, h, w) from UNIAD_LAYERS."""
    size = tuple(maps[-1].shape[-2:])
    return torch.cat([m if tuple(m.shape[-2:]) == size else
                      F.interpolate(m, size=size, mode="bilinear", align_corners=True) for m in maps], dim=1)


class TokenEncoder(nn.Module):
    """A frozen encoder (models.backbones.build_encoder("efficientnet_b4", ..., UNIAD_LAYERS)) followed by
    the resize-and-concatenate: {"tokens": (B, 272, h, w)} (192 channels for efficientnet_lite0). What the
    feature cache stores for UniAD (272 x 14 x 14 = 213 KB an image in float32, not the four maps' 1.9 MB);
    a UniAD built with layers=("tokens",) reads it."""

    def __init__(self, encoder, layers=UNIAD_LAYERS):
        super().__init__()
        self.encoder, self.layers = encoder, tuple(layers)

    def forward(self, images):
        maps = self.encoder(images)
        return {"tokens": concatenated_tokens([maps[name] for name in self.layers])}


class UniAD(nn.Module):
    def __init__(self, in_channels=272, hidden=256, grid=(14, 14), encoder_layers=4, decoder_layers=4, heads=8,
                 ffn=1024, dropout=0.1, neighbour_size=7, jitter_scale=20.0, jitter_prob=1.0,
                 layers=UNIAD_LAYERS, stride=16):
        super().__init__()
        if hidden % 2:
            raise ValueError(f"hidden must be even (two position halves), got {hidden}")
        self.in_channels, self.hidden = in_channels, hidden
        self.grid = tuple(grid)
        self.layers, self.stride = tuple(layers), stride
        self.jitter_scale, self.jitter_prob = float(jitter_scale), float(jitter_prob)
        h, w = self.grid
        # Built in the official order, so that on the same seed every parameter equals the official UniAD module's
        # (built alone): the position tables (nn.Embedding's N(0, 1), then reset to U(0, 1)), one encoder layer
        # deep-copied into all, one decoder layer likewise, then the projections; Xavier last (_init_like_official).
        self.row_embed = nn.Parameter(nn.init.normal_(torch.empty(h, hidden // 2)))
        self.col_embed = nn.Parameter(nn.init.normal_(torch.empty(w, hidden // 2)))
        nn.init.uniform_(self.row_embed)
        nn.init.uniform_(self.col_embed)
        self.encoder = clones(EncoderLayer(hidden, heads, ffn, dropout), encoder_layers)
        self.decoder = clones(DecoderLayer(hidden, heads, ffn, dropout, h * w), decoder_layers)
        self.decoder_norm = nn.LayerNorm(hidden)
        self.input_proj = nn.Linear(in_channels, hidden)
        self.output_proj = nn.Linear(hidden, in_channels)
        mask = None
        if neighbour_size:
            mask = neighbour_mask(h, w, neighbour_size)
            if mask.all(dim=1).any():
                raise ValueError(f"a {neighbour_size}x{neighbour_size} neighbour mask needs a grid larger than the "
                                 f"neighbourhood: on {h}x{w} some token would be barred from every token")
        self.register_buffer("mask", mask, persistent=False)
        self._init_like_official()

    def _init_like_official(self):
        """The official initialiser (models/initializer.py, xavier_uniform), run after construction: every nn.Linear
        (the attentions' output projections included) Xavier-uniform with zero bias, each layer's its own draw, in
        module order. It leaves the rest as built: the attentions' input projections (nn.MultiheadAttention's
        Xavier-uniform, zero bias) and the decoder's learned queries (N(0, 1)) are the same in every layer,
        copies of the one layer built."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def position_embedding(self):
        """(h*w, hidden), row-major: position (r, c) -> [col_embed[c], row_embed[r]] (the official order)."""
        h, w = self.grid
        rows = self.row_embed.unsqueeze(1).expand(h, w, -1)
        cols = self.col_embed.unsqueeze(0).expand(h, w, -1)
        return torch.cat([cols, rows], dim=-1).reshape(h * w, -1)

    def tokens(self, batch):
        """(B, in_channels, h, w): the maps of self.layers resized (bilinear, align_corners=True) to the
        last one's size and concatenated in that order."""
        maps = [batch[name] for name in self.layers]
        size = tuple(maps[-1].shape[-2:])
        if size != self.grid:
            raise ValueError(f"UniAD was built for a {self.grid[0]}x{self.grid[1]} token grid, got {size[0]}x{size[1]} "
                             f"(input {self.stride * size[0]}x{self.stride * size[1]})")
        tokens = concatenated_tokens(maps)
        if tokens.shape[1] != self.in_channels:
            raise ValueError(f"UniAD was built for {self.in_channels} token channels, got {tokens.shape[1]}")
        return tokens

    def jitter(self, tokens):
        """(B, L, C) -> the tokens plus N(0, 1) * ||token|| / C * jitter_scale in training mode, with
        probability jitter_prob for the batch; unchanged otherwise."""
        if not self.training or self.jitter_scale == 0 or (
                self.jitter_prob < 1 and torch.rand(()).item() >= self.jitter_prob):
            return tokens
        scale = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1] * self.jitter_scale
        return tokens + torch.randn_like(tokens) * scale

    def encode(self, sequence):
        """(B, L, C) tokens -> the encoder memory (B, L, hidden)."""
        pos = self.position_embedding()
        x = self.input_proj(sequence)
        for layer in self.encoder:
            x = layer(x, pos, self.mask)
        return x

    def reconstruct(self, batch):
        """(reconstructed, clean) tokens, both (B, L, C) with L = h*w row-major."""
        clean = self.tokens(batch).flatten(2).transpose(1, 2)
        memory = self.encode(self.jitter(clean))
        pos = self.position_embedding()
        out = memory
        for layer in self.decoder:
            out = layer(out, memory, pos, self.mask)
        return self.output_proj(self.decoder_norm(out)), clean

    def loss(self, batch):
        reconstructed, clean = self.reconstruct(batch)
        return F.mse_loss(reconstructed.float(), clean.float())

    @torch.no_grad()
    def anomaly_map(self, batch):
        """(B, 16 h, 16 w) float32 at the input size, before any blur."""
        reconstructed, clean = self.reconstruct(batch)
        h, w = self.grid
        residual = (reconstructed.float() - clean.float()).norm(dim=-1).reshape(-1, 1, h, w)
        return F.interpolate(residual, size=(self.stride * h, self.stride * w), mode="bilinear",
                             align_corners=True)[:, 0]

    @torch.no_grad()
    def bottleneck_features(self, batch):
        """The encoder memory (B, hidden, h, w), 256 x 14 x 14 at 224 px, in eval mode (no jitter or dropout)."""
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(self.tokens(batch).flatten(2).transpose(1, 2))
        finally:
            self.train(was_training)
        h, w = self.grid
        return memory.transpose(1, 2).reshape(memory.shape[0], -1, h, w)

    def configure_optimizers(self, cfg, total_iters):
        """utils.optim.build_optimizer over the trainable parameters (UniAD's settings: AdamW, no schedule);
        the training loop clips the gradient norm to GRAD_CLIP."""
        return build_optimizer([p for p in self.parameters() if p.requires_grad], cfg, total_iters)
