"""The diagnostics pictures, drawn with matplotlib's object API on the Agg canvas (no pyplot
state, no display needed); each function returns the PNG file as bytes.

`states` arguments are [(title, Snapshot), …], typically at initialisation and after training,
drawn side by side so the two can be compared.
"""

from __future__ import annotations

import math
from io import BytesIO
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .diagnostics import (
    MAP_THRESHOLD,
    SATURATED,
    UPDATE_RATIO_GUIDE,
    Snapshot,
    activation_stats,
    grad_data_ratio,
    smooth,
)

States = list[tuple[str, Snapshot]]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: float | None = None) -> bytes:
    """`fig` as PNG bytes (at `dpi`, or the figure's own)."""
    buf = BytesIO()
    fig.savefig(buf, format="png", **({} if dpi is None else {"dpi": dpi}))
    return buf.getvalue()


def _values(t: torch.Tensor) -> Any:
    return t.detach().double().reshape(-1).numpy()


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")


def loss_curve_png(
    steps: list[int], losses: list[float], split_losses: dict[str, float] | None = None,
    ln_vocab: float | None = None, window: int | None = None, val: list[tuple[int, float]] | None = None,
) -> bytes:
    """log10 of the minibatch loss per logged step, its mean over chunks, the val loss evaluated
    during training (`val`: (step, loss) pairs), the final split losses."""
    fig = _figure(10, 4.5)
    ax = fig.subplots()
    finite = [(s, v) for s, v in zip(steps, losses, strict=False) if v > 0 and math.isfinite(v)]
    if finite:
        xs, ys = zip(*finite, strict=False)
        logs = [math.log10(v) for v in ys]
        ax.plot(xs, logs, color="tab:blue", alpha=0.25, lw=0.6, label="minibatch loss")
        window = window or max(1, len(logs) // 100)
        cx, cy = smooth(logs, window)
        ax.plot([xs[i] for i in cx], cy, color="tab:blue", lw=2, label=f"mean over {window} logged steps")
        last = xs[-1]
    else:
        _no_data(ax, "no per-step losses in metrics.jsonl")
        last = 0
    if val:  # --eval-every: the whole val split, eval mode, as training went
        vx = [st for st, v in val if v > 0 and math.isfinite(v)]
        vy = [math.log10(v) for _, v in val if v > 0 and math.isfinite(v)]
        ax.plot(vx, vy, "s-", color="tab:orange", ms=4, lw=1.5, label="val loss during training (eval mode)")
        last = max(last, vx[-1] if vx else 0)
    # the final loss over each whole split, side by side just right of the last step
    style = {"train": ("tab:green", "o"), "val": ("tab:orange", "s"), "test": ("tab:red", "^")}
    offset = 0.015 * max(1, last)
    for k, (split, v) in enumerate((split_losses or {}).items()):
        if v is not None and v > 0 and math.isfinite(v):
            color, marker = style.get(split, ("black", "D"))
            ax.plot([last + (k + 1) * offset], [math.log10(v)], marker, ms=8, color=color, mec="black",
                    label=f"{split} loss (whole split, after training) {v:.4f}")
    if ln_vocab:
        ax.axhline(math.log10(ln_vocab), color="gray", ls="--", lw=1, label=f"ln V = {ln_vocab:.3f} (uniform guess)")
    ax.set_xlabel("step")
    ax.set_ylabel("log10(loss)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return png_bytes(fig)


def _hist_panels(states: States, legend_rows: int = 1, width: float = 14):
    fig = _figure(width, 4.2 + 0.18 * legend_rows)
    axes = fig.subplots(1, max(1, len(states)), squeeze=False)[0]
    return fig, axes


def _legend_below(ax) -> None:
    """Legend under the axes, so it never hides a histogram."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=1, frameon=False)


def _rows(states: States, what: str) -> int:
    snap = states[0][1] if states else None
    if snap is None:
        return 1
    return 1 + (len(snap.tanh()) if what == "tanh" else sum(p.data.dim() == 2 for p in snap.params))


def activation_hist_png(states: States) -> bytes:
    """Histogram of every tanh layer's outputs; the legend holds mean, std and % saturated."""
    fig, axes = _hist_panels(states, _rows(states, "tanh"))
    for ax, (title, snap) in zip(axes, states, strict=False):
        for s in snap.tanh():
            st = activation_stats(s.out)
            ax.hist(_values(s.out), bins=80, range=(-1, 1), density=True, histtype="step", lw=1.5,
                    label=f"{s.label}: mean {st.mean:+.2f}, std {st.std:.2f}, saturated {st.saturated_pct:.1f}%")
        ax.axvspan(-1, -SATURATED, color="red", alpha=0.08)
        ax.axvspan(SATURATED, 1, color="red", alpha=0.08, label=f"|h| > {SATURATED} (saturated)")
        ax.set_xlabel("tanh output h")
        ax.set_ylabel("density")
        ax.set_title(f"Activations, {title}")
        _legend_below(ax)
    fig.suptitle("Tanh activation distribution per layer")
    return png_bytes(fig)


def gradient_hist_png(states: States) -> bytes:
    """Histogram of the gradient arriving at every tanh layer's output, dL/dh."""
    fig, axes = _hist_panels(states, _rows(states, "tanh"))
    for ax, (title, snap) in zip(axes, states, strict=False):
        drawn = False
        for s in snap.tanh():
            if s.grad is None:
                continue
            g = s.grad.double()
            ax.hist(_values(g), bins=80, density=True, histtype="step", lw=1.5,
                    label=f"{s.label}: mean {float(g.mean()):+.1e}, std {float(g.std()):.1e}")
            drawn = True
        if drawn:
            _legend_below(ax)
        else:
            _no_data(ax, "no tanh layers")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        ax.set_xlabel("gradient dL/dh at the tanh output")
        ax.set_ylabel("density")
        ax.set_title(f"Gradients, {title}")
    fig.suptitle("Gradient distribution per tanh layer (similar widths across layers = healthy)")
    return png_bytes(fig)


def weight_grad_hist_png(states: States) -> bytes:
    """Histogram of every weight matrix's gradient; the legend holds std(grad)/std(data)."""
    fig, axes = _hist_panels(states, _rows(states, "params"))
    for ax, (title, snap) in zip(axes, states, strict=False):
        for p in snap.params:
            if p.data.dim() != 2:
                continue
            ratio = grad_data_ratio(p.data, p.grad)
            ax.hist(_values(p.grad), bins=80, density=True, histtype="step", lw=1.5,
                    label=f"{p.label} {tuple(p.data.shape)}: grad:data {ratio:.2e}")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
        ax.set_yscale("log")
        ax.set_xlabel("gradient value")
        ax.set_ylabel("density (log scale)")
        ax.set_title(f"Weight gradients, {title}")
        _legend_below(ax)
    fig.suptitle("Weight-gradient distribution per weight matrix (legend: std(grad) / std(weight))")
    return png_bytes(fig)


def update_ratio_png(diag: dict) -> bytes:
    """log10(std(lr·grad)/std(param)) of every weight matrix over training, with the 1e-3 guide."""
    fig = _figure(11, 4.5)
    ax = fig.subplots()
    steps = diag["steps"]
    for name, ys in diag["update_ratio"].items():
        if not name.endswith(".weight") or "BatchNorm" in name:  # the weight matrices, as in the lectures
            continue
        pts = [(s, y) for s, y in zip(steps, ys, strict=False) if y is not None]
        if pts:
            xs, vs = zip(*pts, strict=False)
            ax.plot(xs, vs, lw=1.2, label=name)
    ax.axhline(UPDATE_RATIO_GUIDE, color="black", ls="--", lw=1.5, label="1e-3 guide (log10 = −3)")
    ax.set_xlabel("step")
    ax.set_ylabel("log10( std(lr·grad) / std(param) )")
    ax.set_title(f"Update-to-data ratio per weight matrix (sampled every {diag.get('every', '?')} steps)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: the lines stay visible
    return png_bytes(fig)


def saturation_over_training_png(diag: dict) -> bytes:
    """% saturated tanh outputs of every tanh layer over training."""
    fig = _figure(10, 3.8)
    ax = fig.subplots()
    for name, row in diag["tanh"].items():
        ax.plot(diag["steps"], row["saturated_pct"], lw=1.2, label=name)
    if not diag["tanh"]:
        _no_data(ax, "no tanh layers")
    ax.set_xlabel("step")
    ax.set_ylabel(f"% of outputs with |h| > {diag.get('saturation_threshold', SATURATED)}")
    ax.set_title("Tanh saturation over training (on each sampled step's minibatch)")
    ax.grid(alpha=0.3)
    if diag["tanh"]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return png_bytes(fig)


def saturation_map_png(states: States, threshold: float = MAP_THRESHOLD) -> bytes:
    """|h| > threshold of the first tanh layer, examples × units; white = saturated.
    A column white from top to bottom is a dead unit."""
    fig = _figure(12, 2.6 * max(1, len(states)) + 0.6)
    axes = fig.subplots(max(1, len(states)), 1, squeeze=False)[:, 0]
    for ax, (title, snap) in zip(axes, states, strict=False):
        tanhs = snap.tanh()
        if not tanhs:
            _no_data(ax, "no tanh layers")
            continue
        s = tanhs[0]
        sat = (s.out.reshape(-1, s.out.shape[-1]).abs() > threshold)  # (B, T, H): B·T rows
        ax.imshow(sat.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
        dead = int(sat.all(0).sum())
        ax.set_title(f"{title}: {100 * float(sat.float().mean()):.1f}% white, {dead} unit(s) white in every row",
                     fontsize=10)
        ax.set_xlabel(f"hidden unit of layer {s.label}")
        ax.set_ylabel("example in batch" if s.out.dim() == 2 else "example × position in batch")
    fig.suptitle(f"Saturation map of the first tanh layer: white = |h| > {threshold}")
    return png_bytes(fig)


def embedding_png(coords: torch.Tensor, chars: list[str], share: list[float] | None, n_embd: int) -> bytes:
    """The embedding table as a 2-D scatter, each point labelled with its character."""
    fig = _figure(7, 7)
    ax = fig.subplots()
    xy = coords.double().numpy()
    ax.scatter(xy[:, 0], xy[:, 1], s=260, color="tab:blue", alpha=0.85)
    for (x, y), ch in zip(xy, chars, strict=False):
        label = {" ": "␣", "\t": "⇥"}.get(ch, ch)
        ax.text(x, y, label, ha="center", va="center", color="white", fontsize=10, fontweight="bold")
    if share is not None:
        ax.set_xlabel(f"principal component 1 ({100 * share[0]:.0f}% of variance)")
        ax.set_ylabel(f"principal component 2 ({100 * share[1]:.0f}% of variance)")
        ax.set_title(f"Character embeddings: first two principal components of {n_embd} dimensions")
    elif n_embd == 1:
        ax.set_xlabel("embedding (1 dimension)")
        ax.set_ylabel("(none)")
        ax.set_title("Character embeddings")
    else:
        ax.set_xlabel("embedding dimension 1")
        ax.set_ylabel("embedding dimension 2")
        ax.set_title("Character embeddings (2 dimensions)")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def lr_find_png(
    lrs: list[float], losses: list[float], smoothed: list[float], suggested: float, steepest: float
) -> bytes:
    """Loss against log10(lr) of a learning-rate sweep, with the two suggestions marked."""
    fig = _figure(10, 4.5)
    ax = fig.subplots()
    logs = [math.log10(lr) for lr in lrs]
    ax.plot(logs, losses, color="tab:blue", alpha=0.3, lw=0.6, label="minibatch loss")
    ax.plot(logs, smoothed, color="tab:blue", lw=2, label="smoothed (moving average)")
    ax.axvline(math.log10(suggested), color="tab:green", ls="--", label=f"suggested lr {suggested:.3g}")
    ax.axvline(math.log10(steepest), color="tab:orange", ls=":", lw=2, label=f"steepest descent lr {steepest:.3g}")
    finite = sorted(v for v in losses if math.isfinite(v))
    if finite:  # keep a late blow-up from squashing the interesting part
        ax.set_ylim(finite[0] - 0.1, min(finite[-1], finite[int(0.99 * (len(finite) - 1))] + 0.5))
    ax.set_xlabel("log10(learning rate)")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate finder: loss while the learning rate grows each step")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return png_bytes(fig)
