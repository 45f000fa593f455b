"""Plot functions of the report: plain lists in, a matplotlib Figure out (Agg canvas, no pyplot state).

Each function draws one kind of evidence (calibration, quadrants, flows, class correlation, robustness, cost,
training curves) with labelled axes and a title, so a figure reads on its own when pasted anywhere.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from richkd.report.inputs import Curve

QUADRANTS = ("confident_correct", "unconfident_correct", "unconfident_wrong", "confident_wrong")
QUADRANT_LABELS = {
    "confident_correct": "confident, correct",
    "unconfident_correct": "unconfident, correct",
    "unconfident_wrong": "unconfident, wrong",
    "confident_wrong": "confident, wrong",
}
QUADRANT_COLORS = {
    "confident_correct": "#1a9850",
    "unconfident_correct": "#a6d96a",
    "unconfident_wrong": "#fdae61",
    "confident_wrong": "#d73027",
}
MAX_NAMED_CLASSES = 20


@dataclass(frozen=True)
class Reliability:
    """One predictor's reliability diagram: per-bin sample count, accuracy and mean confidence (None = empty)."""

    bin_edges: Sequence[float]
    count: Sequence[int]
    accuracy: Sequence[float | None]
    confidence: Sequence[float | None]
    ece: float


def new_figure(width: float, height: float) -> Figure:
    """A Figure on its own Agg canvas: nothing registered with pyplot, so figures never leak into each other."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_reliability(predictors: Mapping[str, Reliability]) -> Figure:
    """Accuracy vs confidence per bin, the gap to the diagonal, and how many samples each bin holds."""
    cols = min(4, len(predictors))
    rows = math.ceil(len(predictors) / cols)
    fig = new_figure(3.6 * cols, 4.4 * rows)
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[3, 1] * rows)
    for k, (name, rel) in enumerate(predictors.items()):
        r, c = divmod(k, cols)
        ax, ax_n = fig.add_subplot(grid[2 * r, c]), fig.add_subplot(grid[2 * r + 1, c])
        edges = np.asarray(rel.bin_edges, dtype=float)
        width = np.diff(edges)
        filled = [i for i, a in enumerate(rel.accuracy) if a is not None]
        acc = np.array([rel.accuracy[i] for i in filled], dtype=float)
        conf = np.array([rel.confidence[i] if rel.confidence[i] is not None else edges[i] + width[i] / 2
                         for i in filled], dtype=float)
        ax.bar(edges[filled], acc, width[filled], align="edge", color="#4575b4", edgecolor="white", label="accuracy")
        ax.bar(edges[filled], conf - acc, width[filled], bottom=acc, align="edge", color="#d73027", alpha=0.3,
               edgecolor="#d73027", label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}\nECE {100 * rel.ece:.1f} %")
        ax.legend(loc="upper left", fontsize="small")
        ax_n.bar(edges[:-1], np.asarray(rel.count, dtype=float), width, align="edge", color="grey")
        ax_n.set(xlim=(0, 1), xlabel="confidence", ylabel="samples", title="samples per bin")
        if max(rel.count, default=0) > 0:
            ax_n.set_yscale("log")
            ax_n.yaxis.set_minor_formatter(NullFormatter())  # minor labels (2x10^1, 3x10^1, ...) overlap
    fig.suptitle("Reliability diagrams (accuracy vs confidence per bin)")
    return fig


def plot_quadrants(quadrants: Mapping[str, Mapping[str, float]], tau: float) -> Figure:
    """Share of samples in each correct/wrong × confident/unconfident quadrant, one stacked bar per predictor."""
    names = list(quadrants)
    fig = new_figure(10, 1.6 + 0.55 * len(names))
    ax = fig.add_subplot()
    left = np.zeros(len(names))
    for key in QUADRANTS:
        share = np.array([100 * float(quadrants[n][key]) for n in names])
        bars = ax.barh(names, share, left=left, color=QUADRANT_COLORS[key], label=QUADRANT_LABELS[key])
        ax.bar_label(bars, labels=[f"{v:.1f}" if v >= 4 else "" for v in share], label_type="center",
                     fontsize="small")
        left += share
    ax.invert_yaxis()
    ax.set(xlim=(0, 100), xlabel="share of test samples (%)", ylabel="predictor",
           title=f"Confidence quadrants (confident = max probability ≥ {tau:g})")
    fig.legend(loc="outside lower center", ncols=4, fontsize="small")
    return fig


def _wrap(text: str, width: int = 30) -> str:
    """Long predictor names (e.g. with the surrogate mark) wrapped so titles stay inside their axes."""
    return textwrap.fill(text, width)


def _short(state: str) -> str:
    return QUADRANT_LABELS.get(state, state).replace("confident", "conf.")


def plot_flow(from_name: str, to_name: str, states: Sequence[str], counts: Sequence[Sequence[int]]) -> Figure:
    """How samples move between quadrant states from one predictor to another: heat map and alluvial bands."""
    mat = np.asarray(counts, dtype=float)
    total = max(mat.sum(), 1.0)
    fig = new_figure(13, 5.4)
    ax, ax_a = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    image = ax.imshow(mat, cmap="Blues")
    for i, j in np.ndindex(mat.shape):
        color = "white" if mat[i, j] > 0.6 * mat.max() else "black"
        ax.text(j, i, f"{int(mat[i, j])}\n{100 * mat[i, j] / total:.1f}%", ha="center", va="center", color=color,
                fontsize="small")
    labels = [_short(s) for s in states]
    ax.set_xticks(range(len(states)), labels, rotation=20, ha="right")
    ax.set_yticks(range(len(states)), labels)
    ax.set(xlabel=_wrap(f"state under {to_name}", 40), ylabel=_wrap(f"state under {from_name}", 40),
           title="Transition counts (share of all samples)")
    fig.colorbar(image, ax=ax, label="samples")
    _alluvial(ax_a, mat / total * 100, states, from_name, to_name)
    fig.suptitle(f"Flows from {from_name} to {to_name}")
    return fig


def _alluvial(ax: Axes, share: np.ndarray, states: Sequence[str], from_name: str, to_name: str) -> None:
    """Bands of width share[i, j] (% of samples) from state i on the left to state j on the right."""
    bar = 0.06
    left_top = np.concatenate([[0.0], np.cumsum(share.sum(axis=1))[:-1]])
    right_top = np.concatenate([[0.0], np.cumsum(share.sum(axis=0))[:-1]])
    left_used, right_used = left_top.copy(), right_top.copy()
    x = np.linspace(bar, 1 - bar, 50)
    ease = 3 * ((x - bar) / (1 - 2 * bar)) ** 2 - 2 * ((x - bar) / (1 - 2 * bar)) ** 3
    colors = [QUADRANT_COLORS.get(s, f"C{k}") for k, s in enumerate(states)]
    for i, j in np.ndindex(share.shape):
        h = share[i, j]
        if h <= 0:
            continue
        y0 = left_used[i] + (right_used[j] - left_used[i]) * ease
        ax.fill_between(x, y0, y0 + h, color=colors[i], alpha=0.25 if i == j else 0.75, linewidth=0)
        left_used[i] += h
        right_used[j] += h
    for k, state in enumerate(states):
        for xpos, top, height in ((0, left_top[k], share[k].sum()), (1 - bar, right_top[k], share[:, k].sum())):
            ax.bar(xpos, height, bar, bottom=top, align="edge", color=colors[k], edgecolor="white")
            if height >= 7:  # smaller blocks are read from the legend and the heat map, not squeezed labels
                ax.text(xpos + (-0.01 if xpos == 0 else bar + 0.01), top + height / 2,
                        f"{_short(state)}\n{height:.1f}%", ha="right" if xpos == 0 else "left", va="center",
                        fontsize="small")
    handles = [Patch(color=colors[k], label=_short(state)) for k, state in enumerate(states)]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncols=len(states) // 2 or 1,
              fontsize="small", title="state (colour of the band = state it leaves)", title_fontsize="small")
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(100, 0)
    ax.set_xticks([bar / 2, 1 - bar / 2], [_wrap(from_name), _wrap(to_name)])
    ax.set(xlabel="predictor", ylabel="share of samples (%)", title="Alluvial view (movers drawn darker)")


def plot_class_correlation(teacher_name: str, teacher: Sequence[Sequence[float]], student_name: str,
                           student: Sequence[Sequence[float]], classes: Sequence[str]) -> Figure:
    """Class-correlation matrices of teacher and student and their absolute difference (mdistiller style)."""
    t, s = np.asarray(teacher, dtype=float), np.asarray(student, dtype=float)
    diff = np.abs(t - s)
    fig = new_figure(15, 5.6 if len(classes) <= MAX_NAMED_CLASSES else 4.8)
    # undefined entries (a class never predicted) arrive as null -> NaN: drawn blank, ignored by the ranges
    low, high = float(np.nanmin([t, s])), float(np.nanmax([t, s]))
    panels = ((_wrap(teacher_name), t, "viridis", low, high), (_wrap(student_name), s, "viridis", low, high),
              (f"|difference| (mean {np.nanmean(diff):.3f})", diff, "magma", 0.0, None))
    for ax, (title, mat, cmap, vmin, vmax) in zip(fig.subplots(1, 3), panels, strict=True):
        image = ax.imshow(mat, cmap=cmap, vmin=vmin, vmax=vmax)
        if len(classes) <= MAX_NAMED_CLASSES:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize="small")
            ax.set_yticks(range(len(classes)), classes, fontsize="small")
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set(xlabel="class", ylabel="class", title=title)
        fig.colorbar(image, ax=ax, shrink=0.8, label="correlation" if cmap == "viridis" else "|difference|")
    fig.suptitle(f"Class correlation: {teacher_name} (left) vs {student_name} (middle)")
    return fig


def plot_robustness_curves(severities: Sequence[int], clean: Mapping[str, float],
                           per_severity: Mapping[str, Sequence[float]]) -> Figure:
    """Accuracy vs corruption severity (mean over corruptions), severity 0 = clean, one line per model."""
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot()
    xs = [0, *severities]
    for name, accs in per_severity.items():
        ax.plot(xs, [clean[name], *accs], marker="o", label=name)
    ax.set_xticks(xs, ["clean", *map(str, severities)])
    ax.set(xlabel="corruption severity", ylabel="top-1 accuracy (%)",
           title="Accuracy under corruption (mean over corruptions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def plot_corruption_heatmap(corruptions: Sequence[str], models: Sequence[str],
                            accuracy: Sequence[Sequence[float]]) -> Figure:
    """Accuracy per corruption (rows) and model (columns), averaged over severities, annotated."""
    mat = np.asarray(accuracy, dtype=float)
    fig = new_figure(2.5 + 1.3 * len(models), 1.5 + 0.32 * len(corruptions))
    ax = fig.add_subplot()
    image = ax.imshow(mat, cmap="RdYlGn", aspect="auto")  # data range: differences between models show
    for i, j in np.ndindex(mat.shape):
        ax.text(j, i, f"{mat[i, j]:.1f}", ha="center", va="center", fontsize="small")
    ax.set_xticks(range(len(models)), models, rotation=20, ha="right")
    ax.set_yticks(range(len(corruptions)), corruptions)
    ax.set(xlabel="model", ylabel="corruption", title="Top-1 (%) per corruption, mean over severities")
    fig.colorbar(image, ax=ax, label="top-1 accuracy (%)")
    return fig


def plot_cost(names: Sequence[str], params: Sequence[float], flops: Sequence[float],
              throughput: Sequence[float], accuracy: Mapping[str, float]) -> Figure:
    """Parameters, FLOPs and throughput per model, and accuracy vs FLOPs for models whose accuracy is known."""
    known = [n for n in names if n in accuracy]
    panels = 4 if known else 3
    fig = new_figure(3.8 * panels, 4.2)
    axes = fig.subplots(1, panels)
    colors = [f"C{k % 10}" for k in range(len(names))]
    bars = (("parameters (M)", np.asarray(params) / 1e6, "Parameters"),
            ("FLOPs per image (M)", np.asarray(flops) / 1e6, "FLOPs (one 1-image forward)"),
            ("throughput (images/s)", np.asarray(throughput, dtype=float), "Throughput"))
    for ax, (label, values, title) in zip(axes, bars, strict=False):
        drawn = ax.bar(names, values, color=colors)
        ax.bar_label(drawn, labels=[f"{v:,.0f}" if v >= 1000 else f"{v:.3g}" for v in values], fontsize="small")
        ax.set(xlabel="model", ylabel=label, title=title)
        ax.tick_params(axis="x", labelrotation=30)
    if known:
        ax = axes[3]
        for k, name in enumerate(names):
            if name in accuracy:
                ax.scatter(flops[k] / 1e6, accuracy[name], color=colors[k], s=50, label=name)
                ax.annotate(name, (flops[k] / 1e6, accuracy[name]), textcoords="offset points", xytext=(5, 5),
                            fontsize="small")
        ax.margins(0.15)
        ax.set(xlabel="FLOPs per image (M)", ylabel="top-1 accuracy (%)", title="Accuracy vs FLOPs")
        ax.legend(fontsize="small")
    fig.suptitle("Model cost")
    return fig


def plot_training_curves(runs: Mapping[str, Curve]) -> Figure:
    """Test top-1 and train loss vs epoch, one line per run (seeds of one arm share a colour); a run with a
    held-out validation split (data.val_split) adds its validation top-1 dashed, the curve that chose its best."""
    fig = new_figure(13, 4.6)
    ax_acc, ax_loss = fig.subplots(1, 2)
    arms: dict[str, str] = {}
    for run, curve in runs.items():
        arm = run.rsplit("_s", 1)[0] if run.rsplit("_s", 1)[-1].isdigit() else run
        color = arms.setdefault(arm, f"C{len(arms) % 10}")
        ax_acc.plot(curve.test_epochs, curve.test_top1, color=color, marker="." if len(curve.test_epochs) < 30
                    else None, label=run)
        if curve.val_epochs:
            ax_acc.plot(curve.val_epochs, curve.val_top1, color=color, linestyle="--", label=f"{run} (val)",
                        marker="." if len(curve.val_epochs) < 30 else None)
        # markers: a one-epoch run is a single point, which a line without markers does not draw
        ax_loss.plot(curve.loss_epochs, curve.train_loss, color=color, label=run,
                     marker="." if len(curve.loss_epochs) < 30 else None)
    has_val = any(curve.val_epochs for curve in runs.values())
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%): test, dashed val" if has_val else "test top-1 (%)",
               title="Test (and validation) top-1 accuracy" if has_val else "Test top-1 accuracy")
    # log scale: distillers' summed losses (RichKD's ~20) would otherwise flatten the CE-only curves
    ax_loss.set(xlabel="epoch", ylabel="train loss (sum of terms, log scale)", title="Training loss", yscale="log")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("Training curves")
    return fig
