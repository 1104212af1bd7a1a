"""Run figures (CADA Fig. 5 and 6 and the pixel scores of its appendix, NoCo Fig. 3, the norm study, ROC
curves) and the run report.

Every plotting function takes plain numbers (numpy arrays or torch tensors) and a path, writes one
PNG atomically (a temporary file in the same folder, then os.replace) and returns the path as a
Path. Figures are drawn at DPI dots per inch on a fixed figure size given by the *_size helpers
below (inches; the PNG is size * DPI pixels, no bbox_inches="tight"), with constrained layout.
The scripts import this module only when --plots is on: it imports no torch, sklearn or pandas.
"""
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from utils.files import atomic_write  # noqa: E402

DPI = 100
SMALL = 7           # legend / tick font size
NORMAL_STYLE = dict(marker="o", s=8, color="tab:blue", alpha=0.7, linewidths=0)
ANOMALOUS_STYLE = dict(marker="x", s=14, color="tab:red", alpha=0.8, linewidths=0.8)
PIXEL_FADE = 0.15   # pixel markers' opacity relative to image markers': thousands per strip, density shows


# ---------------------------------------------------------------- sizes (inches; pixels = DPI x)
def figure_size(n_rows, n_cols, panel_w, panel_h, extra_w=0.0, extra_h=0.0):
    """Size in inches of n_rows x n_cols panels of panel_w x panel_h plus fixed margins.
    All constants are multiples of 1/4 inch, so at DPI 100 the pixel size is exact."""
    return (n_cols * panel_w + extra_w, n_rows * panel_h + extra_h)


def pixel_size(size):
    """(width, height) in pixels of a PNG written at DPI from a figure of `size` inches."""
    return tuple(int(round(v * DPI)) for v in size)


def score_distributions_size(n_aligns, n_classes):
    return figure_size(1, n_aligns, 4.5, 1.0 + 0.25 * max(n_classes, 4), extra_w=1.25, extra_h=0.75)


def map_grid_size(n_images, n_aligns):
    return figure_size(n_images, 1 + n_aligns, 2.0, 2.0, extra_w=0.5, extra_h=1.0)


def polar_size():
    return (7.5, 4.0)


def norm_study_size():
    return (7.5, 4.5)


def _legend_rows(n_lines):
    return math.ceil(n_lines / _legend_cols(n_lines))


def _legend_cols(n_lines):
    return 1 if n_lines <= 5 else 2 if n_lines <= 12 else 3


def roc_curves_size(n_panels, max_lines):
    cols = min(3, max(n_panels, 1))
    rows = math.ceil(max(n_panels, 1) / cols)
    legend_h = 0.25 * math.ceil(_legend_rows(max(max_lines, 1)) * 0.65)
    return figure_size(rows, cols, 4.25, 4.0 + legend_h, extra_h=0.25)


# ---------------------------------------------------------------- helpers
def _np(x, dtype=float):
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _new_figure(size, title=""):
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    if title:
        fig.suptitle(title)
    return fig


def _save(fig, path):
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        fig.clear()  # a pyplot-free Figure: nothing registered globally, dropped when it goes


def _styles(n):
    """Line styles for n lines: the 10 strong tab10 colours, then again dashed, then dotted
    (tab20's pale halves are hard to tell apart)."""
    cmap = matplotlib.colormaps["tab10"]
    dashes = ["-", "--", ":"]
    return [dict(color=cmap(i % 10), linestyle=dashes[(i // 10) % 3]) for i in range(n)]


# ---------------------------------------------------------------- CADA Fig. 5 and the appendix's pixel scores
def _strips(path, scores, title, xlabel, alpha_scale=1.0):
    aligns = list(scores)
    classes = list(dict.fromkeys(c for a in aligns for c in scores[a]))
    fig = _new_figure(score_distributions_size(len(aligns), len(classes)), title)
    axes = np.atleast_1d(fig.subplots(1, max(len(aligns), 1), sharey=True, squeeze=False)[0])
    rng = np.random.default_rng(0)
    normal_style = {**NORMAL_STYLE, "alpha": NORMAL_STYLE["alpha"] * alpha_scale}
    anomalous_style = {**ANOMALOUS_STYLE, "alpha": ANOMALOUS_STYLE["alpha"] * alpha_scale}
    for ax, align in zip(axes, aligns):
        for i, cls in enumerate(classes):
            if cls not in scores[align]:
                continue
            s, y = scores[align][cls]
            s, y = _np(s).ravel(), _np(y).ravel() > 0.5
            # normal in the upper half of the class's strip, anomalous in the lower: neither hides the other
            jitter = i + np.where(y, 1.0, -1.0) * rng.uniform(0.05, 0.38, size=s.size)
            ax.scatter(s[~y], jitter[~y], **normal_style)
            ax.scatter(s[y], jitter[y], **anomalous_style)
        for i in range(len(classes) - 1):
            ax.axhline(i + 0.5, color="0.85", linewidth=0.5, zorder=0)
        ax.set_title(f"align: {align}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.tick_params(labelsize=SMALL + 1)
        ax.grid(axis="x", color="0.9", linewidth=0.5)
    axes[0].set_yticks(range(len(classes)), classes)
    axes[0].set_ylim(len(classes) - 0.5, -0.5)  # first class on top
    handles = [Line2D([], [], linestyle="", markersize=5, marker="o", color="tab:blue", label="normal"),
               Line2D([], [], linestyle="", markersize=6, marker="x", color="tab:red", label="anomalous")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=SMALL + 1, frameon=False)
    return _save(fig, path)


def score_distributions(path, scores, title=""):
    """scores: {align: {class: (image_scores (N,), labels (N,) 0 normal / 1 anomalous)}}.
    One panel per alignment; in it every class is a horizontal strip on ONE shared x axis, normal
    scores as blue dots and anomalous as red crosses, so one sees whether a single threshold could
    separate all classes. Panels of different alignments have their own x scale."""
    return _strips(path, scores, title, "image anomaly score")


def pixel_distributions(path, pixels, title=""):
    """pixels: {align: {class: (pixel scores (n,), labels (n,) 0 normal / 1 anomalous pixel)}}, a
    sample of each class's test pixels (the CADA appendix's pixel-level score distributions). Drawn
    as score_distributions draws image scores, with fainter markers."""
    return _strips(path, pixels, title, "pixel anomaly score", alpha_scale=PIXEL_FADE)


# ---------------------------------------------------------------- CADA Fig. 6
def _hwc(images):
    images = _np(images)
    if images.ndim == 3:  # (N, H, W) grey
        images = images[..., None]
    if images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):  # (N, C, H, W)
        images = images.transpose(0, 2, 3, 1)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return np.clip(images, 0.0, 1.0)


def _contour(ax, mask, height, width):
    mask = _np(mask, dtype=bool)
    if not mask.any() or mask.all():  # no boundary to draw (a normal image)
        return
    mh, mw = mask.shape
    xs = (np.arange(mw) + 0.5) * width / mw - 0.5
    ys = (np.arange(mh) + 0.5) * height / mh - 0.5
    ax.contour(xs, ys, mask.astype(float), levels=[0.5], colors="lime", linewidths=1.0)


def unit_scale(values, low, high):
    """CADA Fig. 6's colour scale: `low` (the dataset-average image mean) to 0 and `high` (the
    dataset-average image maximum) to 1, linearly; high <= low is widened to low + 1e-6."""
    return (_np(values) - low) / max(high - low, 1e-6)


def map_grid(path, images, maps, masks, class_names, scales, title=""):
    """images (N, 3, H, W) or (N, H, W, 3) in [0, 1]; maps {align: (N, H, W)}; masks (N, H, W) bool;
    class_names N strings; scales {align: (low, high)}. One row per image: the image, then per
    alignment the image with its map overlaid (jet, alpha 0.5) and the ground-truth contour. Each
    alignment's maps are drawn as unit_scale(map, low, high) on jet from 0 to 1 (values beyond take
    the end colours), with one colorbar per column."""
    images = _hwc(images)
    aligns = list(maps)
    masks = _np(masks, dtype=bool)
    n, h, w = images.shape[:3]
    cols = 1 + len(aligns)
    fig = _new_figure(map_grid_size(n, len(aligns)), title)
    grid = fig.add_gridspec(n + 1, cols, height_ratios=[0.12] + [1.0] * n)
    extent = (-0.5, w - 0.5, h - 0.5, -0.5)
    for j in range(cols):
        column = unit_scale(maps[aligns[j - 1]], *scales[aligns[j - 1]]) if j else None
        image = None
        for i in range(n):
            ax = fig.add_subplot(grid[i + 1, j])
            ax.imshow(images[i], extent=extent, interpolation="nearest")
            if column is not None:
                image = ax.imshow(column[i], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0,
                                  extent=extent, interpolation="bilinear")
            _contour(ax, masks[i], h, w)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(str(class_names[i]), fontsize=9)
            if i == 0:
                ax.set_title("image" if j == 0 else f"align: {aligns[j - 1]}", fontsize=9)
        if column is not None:
            cax = fig.add_subplot(grid[0, j])
            # an opaque mappable of the same scale: the colorbar shows the colours at full strength
            bar = fig.colorbar(ScalarMappable(image.norm, "jet"), cax=cax, orientation="horizontal")
            bar.ax.tick_params(labelsize=SMALL, top=True, labeltop=True, bottom=False, labelbottom=False)
            bar.set_label("0: mean, 1: max (dataset-average image)", fontsize=SMALL)
            bar.ax.xaxis.set_label_position("top")
        else:
            cax = fig.add_subplot(grid[0, j])
            cax.axis("off")
            cax.text(0.0, 0.5, "lime line:\nground truth", fontsize=SMALL, va="center",
                     transform=cax.transAxes)
    return _save(fig, path)


# ---------------------------------------------------------------- NoCo Fig. 3
def polar_plot(path, norms, angles, labels, title="", target_norm=None):
    """Each test sample at radius = norm of its projected feature and angle = its angle to the
    target (radians, 0..pi); normal and anomalous apart; the target a star at (0, target_norm)."""
    norms, angles, labels = _np(norms).ravel(), _np(angles).ravel(), _np(labels).ravel() > 0.5
    # a polar Axes draws a half-disc of radius R in the middle half of a 2R x 2R box, so the box is
    # placed by hand (its empty lower quarter below the figure) rather than by a layout engine
    width, height = polar_size()
    fig = Figure(figsize=(width, height), dpi=DPI)
    if title:
        fig.suptitle(title)
    radius, left, bottom = 2.5, 0.6, 0.75  # inches: the half-disc's radius and lower-left corner
    ax = fig.add_axes([left / width, (bottom - radius / 2) / height, 2 * radius / width,
                       2 * radius / height], projection="polar")
    ax.set_thetamin(0)
    ax.set_thetamax(180)
    # normal images drawn over the anomalous crosses
    ax.scatter(angles[~labels], norms[~labels], label="normal", zorder=3, **{**NORMAL_STYLE, "s": 10})
    ax.scatter(angles[labels], norms[labels], label="anomalous", **{**ANOMALOUS_STYLE, "s": 18})
    if target_norm is not None:
        theta = np.linspace(0, np.pi, 181)
        ax.plot(theta, np.full_like(theta, target_norm), color="0.4", linestyle="--", linewidth=0.8,
                label=f"target norm ({target_norm:g})")
        ax.scatter([0.0], [target_norm], marker="*", s=220, color="gold", edgecolors="black",
                   linewidths=0.8, zorder=5, label="target", clip_on=False)
    top = max([float(np.nanmax(norms)) if norms.size else 1.0, target_norm or 0.0]) * 1.05
    ax.set_rlim(0, top if top > 0 else 1.0)
    ax.tick_params(labelsize=SMALL + 1)
    fig.text((left + radius) / width, 0.1 / height, "radius: norm of the projected feature;  "
             "angle: to the target", ha="center", va="bottom", fontsize=SMALL + 1)
    ax.legend(loc="upper left", bbox_to_anchor=((left + 2 * radius + 0.3) / width, 1 - 0.5 / height),
              bbox_transform=fig.transFigure, fontsize=SMALL + 1, frameon=False)
    return _save(fig, path)


# ---------------------------------------------------------------- norm study
def norm_study(path, norms, values, metric="I-AUROC", title=""):
    """One line per class of `metric` against the target norm (log2 x axis). values:
    {class: [value per norm]} in percent (fractions, all <= 1, are scaled to percent); classes
    whose values are all NaN are skipped; a thick black line is the mean of the classes drawn."""
    norms = _np(norms).ravel()
    series = {c: _np(v).ravel() for c, v in values.items()}
    series = {c: v for c, v in series.items() if np.isfinite(v).any()}
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()]) if series else np.array([])
    scale = 100.0 if finite.size and np.all(np.abs(finite) <= 1.0) else 1.0
    fig = _new_figure(norm_study_size(), title)
    ax = fig.add_subplot()
    for (cls, v), style in zip(series.items(), _styles(len(series))):
        ax.plot(norms, v * scale, marker="o", markersize=3, linewidth=1.0, label=cls, **style)
    if len(series) > 1:
        ax.plot(norms, np.nanmean(np.stack(list(series.values())), axis=0) * scale, color="black",
                linewidth=2.2, label="mean")
    ax.set_xscale("log", base=2)
    if norms.size:
        ax.set_xticks(norms, [f"{n:g}" for n in norms])
        ax.minorticks_off()
    ax.set_xlabel("target norm (log2 scale)")
    ax.set_ylabel(f"{metric} (%)")
    ax.grid(color="0.9", linewidth=0.5)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=SMALL, frameon=False,
                  ncol=1 if len(series) <= 16 else 2)
    return _save(fig, path)


# ---------------------------------------------------------------- ROC curves
def roc_curves(path, curves, title=""):
    """curves: {panel: {line: (scores (N,), labels (N,))}}; one panel per key (at most 3 columns),
    one ROC line per entry with its AUROC (%) in the legend, and the chance diagonal."""
    from sklearn.metrics import roc_auc_score, roc_curve

    panels = list(curves)
    max_lines = max([len(curves[p]) for p in panels] or [1])
    cols = min(3, max(len(panels), 1))
    rows = math.ceil(max(len(panels), 1) / cols)
    fig = _new_figure(roc_curves_size(len(panels), max_lines), title)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes, panels):
        lines = curves[panel]
        for index, ((name, (s, y)), style) in enumerate(zip(lines.items(), _styles(len(lines)))):
            s, y = _np(s).ravel(), _np(y).ravel() > 0.5
            width = 1.0 + 2.0 * (len(lines) - 1 - index) / max(len(lines) - 1, 1)  # identical curves stay visible
            if y.all() or not y.any():
                ax.plot([], [], label=f"{name} (n/a: one label)", **style)
                continue
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, linewidth=width, clip_on=False, zorder=3, **style,
                    label=f"{name} ({100 * roc_auc_score(y, s):.1f})")
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=0.8)
        ax.set_xlim(-0.01, 1.01)  # the curves' first and last segments lie on the frame: drawn over it
        ax.set_ylim(-0.01, 1.01)
        ax.set_title(str(panel), fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.tick_params(labelsize=SMALL + 1)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=SMALL, frameon=False,
                  ncol=_legend_cols(len(lines)), title="AUROC (%)", title_fontsize=SMALL)
    return _save(fig, path)


# ---------------------------------------------------------------- report
def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.2f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(table):
    """A pandas DataFrame as a Markdown table (floats to 2 decimals, NaN empty); a named or
    non-integer index becomes the first column(s). Needs no `tabulate`."""
    frame = table
    index = frame.index
    if any(name is not None for name in index.names) or index.dtype.kind not in "iu":
        frame = frame.reset_index()  # an unnamed integer index (even a filtered one) is left out
    header = [str(c) for c in frame.columns]
    numeric = [frame[c].dtype.kind in "iuf" for c in frame.columns]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
    for row in frame.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def write_report(run_dir, table, figures, title="Run report"):
    """<run_dir>/report.md: a heading, the table, then each (png_path, caption) of figures as an
    image relative to run_dir with an italic one-line caption. Written atomically."""
    run_dir = Path(run_dir)
    parts = [f"# {title}", "", markdown_table(table), ""]
    for png, caption in figures:
        caption = " ".join(str(caption).split())
        rel = Path(os.path.relpath(Path(png).absolute(), run_dir.absolute())).as_posix()
        alt = caption.replace("[", "(").replace("]", ")")
        parts += [f"![{alt}](<{rel}>)" if " " in rel else f"![{alt}]({rel})", "", f"*{caption}*", ""]
    text = "\n".join(parts)

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(run_dir / "report.md", write)
