"""Score alignment for absolute-unified AD: CADA (Class-Agnostic Distribution Alignment, the CADA
paper, sections 3.2-3.3) and the variants it is compared with.

A unified model's normal scores sit at a different level in every class, so one threshold cannot
serve all classes. Each alignment estimates, for one image, the mean u and the top gamma of the
normal score map of its class, and calibrates the map as (M - u) / (gamma - u) (eq. 5) before the
blur. The base model is frozen throughout; only the small head below is trained.

  none         M as it is.
  cada         a regressor predicts (u, gamma) from the image's features; trained on each TRAINING
               image's (mean, max) of its own map with SmoothL1 (eq. 3-4). No class label anywhere.
  cada_sigma   the same head and loss with gamma_img replaced by u_img + SIGMA_WIDTH * sigma_img in eq. 3
               (sec. 4.4, Table 5): its second output is gamma_hat = u_hat + 3 sigma_hat itself.
  class_aware  CaDA-A: u_c = mean over class c's training pixels, gamma_c = mean of the per-image
               maxima (the paper's choice "to avoid outliers"); the class label is used at test.
  classifier   CaDA-B: a head of the regressor's structure (sec. 4.4), trained with cross-entropy on the
               training images' class labels, picks (u_c, gamma_c) of its argmax class at test.
  cluster      ours (no paper): class statistics without class labels. The training images' head inputs,
               global-average-pooled and standardised, are clustered by k-means (scikit-learn, k = 2 .. 10
               chosen on the training images alone: by the best silhouette score, or with --cluster_k
               calibration by the cross-validated error of the clusters' statistics); each cluster gets
               class_aware's (u, gamma) over its images, and a test image takes its nearest centroid's.

Head (CADA Table 3's structures; default "1 conv, 2 linear"): `convs` times [conv (channels kept,
CONV_KERNEL) -> BatchNorm -> ReLU], global average pooling, then `linears` linear layers, HIDDEN wide
between them with a ReLU after each hidden one. The paper fixes the conv's output width, the hidden
width (sec. 4.2; "kept to be 256" for every structure, sec. 4.4) and the dropout rate 0.25 (sec. 4.2).
Of the dropout's place it says only "a simple Dropout before linear layers" (sec. 3.3): we read it
literally, a Dropout before every linear layer ("every_linear"); "first_linear" puts one before the
first linear layer only (the two agree for one linear layer). The kernel, normalisation, activations
and pooling are ours (named constants below). The default head on a wide_resnet50_2 bottleneck (2048
channels) has 4,723,458 parameters.

Every alignment is one entry of ALIGNMENTS (as every method is one of models.METHODS): whether it has a
head to train (and a checkpoint <model>_<kind>.pt), whether it reads the head input (features), whether it
needs each image's class label at test, the (u, gamma) it estimates per image, its loss, how it
estimates at test, its optimiser (utils.optim), what it fits before training (class table, clusters) and
whether its state is saved. Scripts and utils read these fields, never a name.

A batch for `loss` is a dict of tensors: "features" (B, C, h, w), "mean", "max", "std" (B,) of each
image's map, "label" (B,) its class index. Nothing here reads files or prints.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.optim import build_optimizer, optimizer_settings

DROPOUT_PLACES = ("every_linear", "first_linear")
POOLS = ("mean", "median")  # the head's spatial pooling: global average (ours; the paper does not say) | median

CONVS = 1             # Table 3's default structure: 1 conv, ...
LINEARS = 2           # ... 2 linear
CONV_KERNEL = 1       # the paper does not say; 1x1: the default head has 4.7 M parameters on 2048 channels (3x3: 38 M)
HIDDEN = 256          # CADA sec. 4.2 and 4.4
DROPOUT = 0.25        # CADA sec. 4.2
DROPOUT_AT = "every_linear"  # sec. 3.3: "a simple Dropout before linear layers"
SIGMA_WIDTH = 3.0     # sec. 4.4, Table 5: gamma = u + 3 sigma
MIN_SPREAD = 1e-6     # eq. 5 guard: gamma_hat - u_hat is clamped to at least this (maps stay ordered, finite)
MAX_CLUSTERS = 10     # cluster: k is tried from 2 to min(MAX_CLUSTERS, training images - 1) ...
KMEANS_INITS = 10     # ... each k-means run from this many seeded initialisations (scikit-learn's n_init)
CLUSTER_CRITERIA = ("silhouette", "calibration")  # cluster: how k is chosen (choose_clusters)


class StatsHead(nn.Module):
    """`convs` conv-BN-ReLU layers, global pooling (average, or the median of each channel over the positions),
    `linears` linear layers with dropout before every one (or the first only): (B, C, h, w) -> (B, outputs)."""

    def __init__(self, channels, outputs=2, convs=CONVS, linears=LINEARS, dropout=DROPOUT, dropout_at=DROPOUT_AT,
                 kernel_size=CONV_KERNEL, hidden=HIDDEN, pool="mean"):
        super().__init__()
        if convs < 0 or linears < 1 or dropout_at not in DROPOUT_PLACES or pool not in POOLS:
            raise ValueError(f"a head needs convs >= 0, linears >= 1, dropout_at in {DROPOUT_PLACES} and pool in "
                             f"{POOLS}, got {convs}, {linears}, {dropout_at!r}, {pool!r}")
        self.pool = pool
        self.conv = nn.Sequential(*(layer for _ in range(convs) for layer in (
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(channels), nn.ReLU(inplace=True))))
        widths = [channels] + [hidden] * (linears - 1) + [outputs]
        layers = []
        for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
            if i:
                layers.append(nn.ReLU(inplace=True))
            if i == 0 or dropout_at == "every_linear":
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(width_in, width_out))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features):
        mapped = self.conv(features)
        if self.pool == "mean":
            return self.mlp(mapped.mean(dim=(2, 3)))
        ordered = mapped.flatten(2).sort(dim=2).values  # the exact median (the mean of the middle two when even),
        n = ordered.shape[2]                            # by a sort, which ONNX exports (torch.median it does not)
        return self.mlp((ordered[..., (n - 1) // 2] + ordered[..., n // 2]) / 2)


def map_statistics(maps):
    """Per-image mean, max and standard deviation of (N, H, W) maps: the regression targets."""
    flat = maps.flatten(1).float()
    return {"mean": flat.mean(dim=1), "max": flat.amax(dim=1), "std": flat.std(dim=1)}


def class_statistics(stats, labels, n_classes):
    """(n_classes, 2) CaDA-A statistics: u_c = mean of the images' means (all maps have one size, so
    this is the mean over the class's pixels), gamma_c = mean of the images' maxima."""
    table = torch.zeros(n_classes, 2)
    for c in range(n_classes):
        rows = labels == c
        if not rows.any():
            raise ValueError(f"class index {c} has no training image")
        table[c] = torch.stack([stats["mean"][rows].mean(), stats["max"][rows].mean()])
    return table


def calibrate(maps, u, gamma):
    """CADA eq. 5: (M - u) / (gamma - u) per image, the denominator clamped to at least MIN_SPREAD."""
    u, gamma = u.to(maps).view(-1, 1, 1), gamma.to(maps).view(-1, 1, 1)
    return (maps - u) / (gamma - u).clamp_min(MIN_SPREAD)


def mean_and_max(stats):
    """(u, gamma) = each image's (mean, max) of its map (CADA eq. 3)."""
    return stats["mean"], stats["max"]


def mean_and_sigma_width(stats):
    """(u, gamma) = (mean, mean + SIGMA_WIDTH * std) of each image's map (sec. 4.4, Table 5)."""
    return stats["mean"], stats["mean"] + SIGMA_WIDTH * stats["std"]


def _regression_loss(alignment, out, batch):
    u, gamma = alignment.spec.targets(batch)
    return (F.smooth_l1_loss(out[:, 0], u, beta=alignment.beta)  # CADA eq. 3
            + F.smooth_l1_loss(out[:, 1], gamma, beta=alignment.beta))


def _class_loss(alignment, out, batch):
    return F.cross_entropy(out, batch["label"].long())


def _identity(alignment, features, labels):
    n = len(labels if features is None else features)
    return torch.zeros(n), torch.ones(n)


def _head_outputs(alignment, features, labels):
    out = alignment.head_output(features).cpu()
    return out[:, 0], out[:, 1]


def _class_of_label(alignment, features, labels):
    picked = alignment.class_stats.cpu()[labels.long().cpu()]
    return picked[:, 0], picked[:, 1]


def _class_of_argmax(alignment, features, labels):
    picked = alignment.class_stats.cpu()[alignment.head_output(features).cpu().argmax(dim=1)]
    return picked[:, 0], picked[:, 1]


def _class_table(alignment, table, seed):
    alignment.set_class_statistics(table, table["label"].long())


def pooled_standardised(features, mean, std):
    """(N, C, h, w) head inputs -> (N, C): global average pooled, then (x - mean) / std per channel."""
    return (features.float().mean(dim=(2, 3)) - mean) / std


def calibration_error(points, u, gamma, k, seed):
    """How far, in calibrated units, training images' own (u, gamma) lie from those of the k-means cluster they
    fall in, cross-validated: a seeded half of the images fits the clusters and each cluster's (u, gamma)
    (class_statistics), the other half is scored, then the other way round; the mean over images of
    (|u - u_c| + |gamma - gamma_c|) / (gamma_c - u_c) per image (N,). Merging two classes of different levels costs
    every image of the smaller one; splitting a class into clusters too small to estimate costs noise."""
    from sklearn.cluster import KMeans
    order = np.random.default_rng(seed).permutation(len(points))
    halves = order[:len(order) // 2], order[len(order) // 2:]
    errors = []
    for fitted, scored in (halves, halves[::-1]):
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_INITS).fit(points[fitted])
        labels = torch.as_tensor(kmeans.labels_).long()
        table = class_statistics({"mean": u[fitted], "max": gamma[fitted]}, labels, k)
        nearest = torch.as_tensor(kmeans.predict(points[scored])).long()
        u_c, gamma_c = table[nearest, 0], table[nearest, 1]
        spread = (gamma_c - u_c).clamp_min(MIN_SPREAD)
        errors.append(((u[scored] - u_c).abs() + (gamma[scored] - gamma_c).abs()) / spread)
    scored_first = torch.as_tensor(np.concatenate(halves[::-1]))
    return torch.empty(len(points)).index_put_((scored_first,), torch.cat(errors))


def choose_clusters(points, seed, max_clusters=MAX_CLUSTERS, criterion="silhouette", u=None, gamma=None):
    """(k, labels (N,), centroids (k, D)) of (N, D) points: scikit-learn KMeans (random_state `seed`,
    KMEANS_INITS initialisations) for k = 2 .. min(max_clusters, N - 1), the k of the best silhouette score, or
    with criterion "calibration" the smallest k (up to N / 2) whose mean calibration_error of the images' own
    (u, gamma) (N,) each is within one standard error of the lowest (the one-standard-error rule of
    cross-validation: more clusters must fit clearly better). Reads the training points (and statistics) only."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score
    points = np.asarray(points, dtype=np.float64)
    if criterion not in CLUSTER_CRITERIA:
        raise ValueError(f"cluster: criterion must be one of {CLUSTER_CRITERIA}, got {criterion!r}")
    if len(points) < (4 if criterion == "calibration" else 3):
        raise ValueError(f"cluster: k-means with a {criterion} criterion needs at least "
                         f"{4 if criterion == 'calibration' else 3} training images, got {len(points)}")
    if len(np.unique(points, axis=0)) < 2:
        raise ValueError("cluster: the training images' head inputs are all identical: nothing to cluster")
    if criterion == "calibration":
        errors = {k: calibration_error(points, u, gamma, k, seed)
                  for k in range(2, min(max_clusters, len(points) // 2) + 1)}
        best = min(errors, key=lambda j: (errors[j].mean().item(), j))
        limit = errors[best].mean() + errors[best].std() / len(points) ** 0.5
        k = min(j for j in errors if errors[j].mean() <= limit)
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_INITS).fit(points)
        return k, torch.as_tensor(kmeans.labels_).long(), torch.as_tensor(kmeans.cluster_centers_).float()
    best = None
    for k in range(2, min(max_clusters, len(points) - 1) + 1):
        kmeans = KMeans(n_clusters=k, random_state=seed, n_init=KMEANS_INITS).fit(points)
        if len(set(kmeans.labels_)) < 2:  # identical points: one cluster, no silhouette
            continue
        score = silhouette_score(points, kmeans.labels_)
        if best is None or score > best[0]:
            best = (score, k, kmeans.labels_, kmeans.cluster_centers_)
    if best is None:
        raise ValueError("cluster: the training images' head inputs are all identical: nothing to cluster")
    return best[1], torch.as_tensor(best[2]).long(), torch.as_tensor(best[3]).float()


def _cluster_table(alignment, table, seed):
    """Fit `cluster` on the training table: standardise the pooled head inputs, choose_clusters (by the
    alignment's criterion), each cluster's class_statistics; record k and the adjusted Rand index against the
    class labels (never used)."""
    from sklearn.metrics import adjusted_rand_score
    pooled = table["features"].float().mean(dim=(2, 3))
    mean, std = pooled.mean(dim=0), pooled.std(dim=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel: left as it is
    k, labels, centroids = choose_clusters(pooled_standardised(table["features"], mean, std), seed,
                                           criterion=alignment.cluster_criterion, u=table["mean"], gamma=table["max"])
    device = alignment.class_stats.device
    for name, value in (("feature_mean", mean), ("feature_std", std), ("centroids", centroids),
                        ("cluster_stats", class_statistics(table, labels, k))):
        alignment.register_buffer(name, value.to(device))
    alignment.record = {"clusters": k, "cluster_ari": adjusted_rand_score(table["label"].long().numpy(),
                                                                          labels.numpy())}


def _cluster_buffers(channels):
    return {"feature_mean": torch.zeros(channels), "feature_std": torch.ones(channels),
            "centroids": torch.zeros(0, channels), "cluster_stats": torch.zeros(0, 2)}


def _nearest_cluster(alignment, features, labels):
    pooled = pooled_standardised(features.to(alignment.centroids.device), alignment.feature_mean,
                                 alignment.feature_std)
    nearest = ((pooled[:, None] - alignment.centroids[None]) ** 2).sum(dim=2).argmin(dim=1)
    picked = alignment.cluster_stats[nearest].cpu()
    return picked[:, 0], picked[:, 1]


def head_sgd(cfg):
    """The heads' optimiser: utils.optim's SGD (CADA sec. 4.2: lr 5e-2, momentum 0.9, weight decay 1e-4),
    no schedule."""
    return optimizer_settings(lr=cfg.cada_lr, weight_decay=cfg.cada_weight_decay, optimizer="sgd",
                              momentum=cfg.cada_momentum)


@dataclass(frozen=True)
class AlignmentKind:
    name: str
    trained: bool                # a head trained by `loss` with `optimizer`, saved as <model>_<name>.pt
    reads_features: bool         # estimates (u, gamma) from the head input (models.Method.head_input)
    needs_labels: bool           # needs each image's class label at test (predict.py cannot serve it)
    calibrates: bool             # False: the maps are scored as they are (eq. 5 with u = 0, gamma = 1)
    estimate: Callable           # (alignment, features, labels) -> (u, gamma) per image, on the CPU
    targets: Callable = mean_and_max  # (map statistics) -> the true (u, gamma) per image it estimates
    head_outputs: Callable = None     # (n_classes) -> the head's outputs (trained kinds)
    loss: Callable = None             # (alignment, head output, batch) -> scalar (trained kinds)
    optimizer: Callable = None        # (cfg) -> utils.optim.optimizer_settings (trained kinds)
    fit: Callable = _class_table      # (alignment, training table, seed): statistics fitted before any training
    buffers: Callable = None          # (channels) -> {name: tensor}: its own state, sized by `fit`
    saved: bool = None                # its state is saved as <model>_<name>.pt (None: when trained)

    def __post_init__(self):
        if self.saved is None:
            object.__setattr__(self, "saved", self.trained)


ALIGNMENTS = {kind.name: kind for kind in (
    AlignmentKind("none", False, False, False, False, _identity),
    AlignmentKind("cada", True, True, False, True, _head_outputs, mean_and_max, lambda n: 2, _regression_loss,
                  head_sgd),
    AlignmentKind("cada_sigma", True, True, False, True, _head_outputs, mean_and_sigma_width, lambda n: 2,
                  _regression_loss, head_sgd),
    AlignmentKind("class_aware", False, False, True, True, _class_of_label),
    AlignmentKind("classifier", True, True, False, True, _class_of_argmax, mean_and_max, lambda n: n, _class_loss,
                  head_sgd),
    AlignmentKind("cluster", False, True, False, True, _nearest_cluster, fit=_cluster_table,
                  buffers=_cluster_buffers, saved=True),
)}
UNCALIBRATED = "none"    # predict.py's alignment when the run trained no PREDICT_DEFAULT
PREDICT_DEFAULT = "cada"  # ... and the one it calibrates with when the run trained it


def alignment_of(kind, channels, n_classes, cfg):
    """The Alignment of `kind` a run's options describe (train_mvtec.py's --cada_* options), as training and
    predict.py build it."""
    return Alignment(kind, channels, n_classes, cfg.cada_beta, cfg.cada_convs, cfg.cada_linears, cfg.cada_dropout,
                     cfg.cada_dropout_at, pool=cfg.cada_pool, standardise=cfg.cada_standardise,
                     cluster_criterion=cfg.cluster_k)


def targets(kind, stats):
    """The true (u, gamma) per image of map_statistics `stats` that an alignment of `kind` estimates."""
    return ALIGNMENTS[kind].targets(stats)


class Alignment(nn.Module):
    """One alignment of ALIGNMENTS with the module face of the base models: loss(batch),
    configure_optimizers(cfg, total_iters), and statistics(features, labels) -> (u, gamma). The
    trained kinds' head is a StatsHead of `convs`, `linears`, `dropout`, `dropout_at` (Table 3)."""

    def __init__(self, kind, channels=0, n_classes=1, smooth_l1_beta=0.1, convs=CONVS, linears=LINEARS,
                 dropout=DROPOUT, dropout_at=DROPOUT_AT, kernel_size=CONV_KERNEL, pool="mean", standardise=False,
                 cluster_criterion="silhouette"):
        super().__init__()
        if kind not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {kind!r}")
        self.kind, self.spec, self.beta = kind, ALIGNMENTS[kind], smooth_l1_beta
        self.cluster_criterion = cluster_criterion  # cluster: how k is chosen (choose_clusters)
        self.head = StatsHead(channels, self.spec.head_outputs(n_classes), convs, linears, dropout, dropout_at,
                              kernel_size, pool=pool) if self.spec.trained else None
        self.register_buffer("class_stats", torch.zeros(n_classes, 2))  # CaDA-A/B: (u_c, gamma_c)
        if standardise and self.spec.trained:  # the head reads (x - mean) / std per channel, fitted by fit_statistics
            self.register_buffer("input_mean", torch.zeros(channels))
            self.register_buffer("input_std", torch.ones(channels))
        for name, value in (self.spec.buffers(channels) if self.spec.buffers else {}).items():
            self.register_buffer(name, value)
        self.record = {}  # what fit_statistics found, for alignment_stats.csv (cluster: k and the ARI)

    def set_class_statistics(self, stats, labels):
        self.class_stats.copy_(class_statistics(stats, labels, len(self.class_stats)))

    def fit_statistics(self, table, seed=0):
        """The kind's statistics from the training table (evaluation.head_training_table): the class table
        by label, or (cluster) k-means clusters of the head inputs and theirs, seeded by `seed`."""
        if hasattr(self, "input_mean"):
            features = table["features"].float()
            self.input_mean.copy_(features.mean(dim=(0, 2, 3)))
            std = features.std(dim=(0, 2, 3))
            self.input_std.copy_(torch.where(std > 0, std, torch.ones_like(std)))  # a constant channel: as it is
        self.spec.fit(self, table, seed)

    def head_output(self, features):
        """The trained head on (N, C, h, w) head inputs, standardised first where the alignment was built so."""
        if hasattr(self, "input_mean"):
            features = (features - self.input_mean.view(1, -1, 1, 1)) / self.input_std.view(1, -1, 1, 1)
        return self.head(features).float()

    def load_state_dict(self, state_dict, *args, **kwargs):
        for name in self.spec.buffers(0) if self.spec.buffers else ():  # sized by fit: take the saved sizes
            if name in state_dict:
                self.register_buffer(name, torch.empty_like(state_dict[name], device=self.class_stats.device))
        return super().load_state_dict(state_dict, *args, **kwargs)

    def loss(self, batch):
        return self.spec.loss(self, self.head_output(batch["features"]), batch)

    @torch.no_grad()
    def statistics(self, features=None, labels=None):
        """(u, gamma) per image. `labels` (class indices) are read by the kinds that need_labels only;
        `features` by those that read_features; none gives u = 0, gamma = 1 (the identity calibration)."""
        return self.spec.estimate(self, features, labels)

    def configure_optimizers(self, cfg, total_iters=None):
        """utils.optim.build_optimizer with the kind's optimizer settings (CADA sec. 4.2's SGD), no schedule."""
        return build_optimizer(self.head.parameters(), self.spec.optimizer(cfg), total_iters)
