"""The report's figures, drawn with matplotlib's object API onto the Agg canvas (no display,
no global pyplot state). Each function takes an experiment's result and a path and writes one
PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..experiments import DerivationChecks, GradientAnatomy, Identity, Race, SaturatedNeuron

# Colour-blind-safe pair (Okabe–Ito): cross-entropy blue, MSE orange.
COLOR = {"cross_entropy": "#0072B2", "mse": "#E69F00", "sigma_prime": "#777777"}
LABEL = {"cross_entropy": "cross-entropy", "mse": "MSE"}
DPI = 110


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    return path


def draw_anatomy(r: GradientAnatomy, path: Path) -> Path:
    """Left: ∂L/∂z against z for y = 1 (linear). Right: |∂L/∂z| for both targets (log)."""
    fig = _figure(10, 3.8)
    left, right = fig.subplots(1, 2)
    t1 = r.targets.index(1.0)
    left.axvspan(r.z[0], 0, color="#f3d9d9", alpha=0.6, lw=0, label="wrong (a < 1/2, y = 1)")
    left.plot(r.z, r.bce_grad[t1], color=COLOR["cross_entropy"], lw=2.2, label="BCE: a − y")
    left.plot(r.z, r.mse_grad[t1], color=COLOR["mse"], lw=2.2, label="MSE: (a − y) σ'(z)")
    left.plot(r.z, r.sigmoid_prime, color=COLOR["sigma_prime"], ls="--", lw=1.2, label="σ'(z)")
    left.axhline(0, color="black", lw=0.6)
    left.set(xlabel="pre-activation z", ylabel="∂L/∂z", title="target y = 1")
    left.legend(fontsize=8, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    for t, y in enumerate(r.targets):
        style = "-" if y == 1.0 else ":"
        right.semilogy(
            r.z,
            np.abs(r.bce_grad[t]),
            color=COLOR["cross_entropy"],
            ls=style,
            lw=2,
            label=f"BCE, y = {y:g}",
        )
        right.semilogy(
            r.z, np.abs(r.mse_grad[t]), color=COLOR["mse"], ls=style, lw=2, label=f"MSE, y = {y:g}"
        )
    right.set(
        xlabel="pre-activation z", ylabel="|∂L/∂z| (log scale)", title="both targets (log scale)"
    )
    right.set_ylim(1e-6, 3)
    right.legend(fontsize=8, frameon=False, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    return _save(fig, path)


def draw_neuron(r: SaturatedNeuron, path: Path) -> Path:
    """Output and loss per step, one column per start, both losses in each panel."""
    starts = list(r.starts)
    fig = _figure(10, 5.6)
    axes = fig.subplots(2, len(starts), sharex=True, squeeze=False)
    steps = np.arange(r.steps + 1)
    for col, start in enumerate(starts):
        top, bottom = axes[0, col], axes[1, col]
        w0, b0 = r.starts[start]
        z0 = w0 * r.x + b0
        for loss in ("cross_entropy", "mse"):
            run = r.run(start, loss)
            n = run.steps_to_correct
            label = (
                f"{LABEL[loss]}: right after {n} steps"
                if n is not None
                else (f"{LABEL[loss]}: still wrong after {r.steps}")
            )
            top.plot(steps, run.output, color=COLOR[loss], lw=2.2, label=label)
            bottom.plot(steps, run.loss_values, color=COLOR[loss], lw=2.2, label=LABEL[loss])
            if n is not None:
                top.plot([n], [run.output[n]], "o", color=COLOR[loss], ms=6)
                top.axvline(n, color=COLOR[loss], lw=0.8, ls=":")
        top.axhline(0.5, color="black", lw=0.6, ls="--")
        top.set(
            title=f"{start} start: z₀ = {z0:g}, a₀ = {r.run(start, 'mse').output[0]:.4f}, "
            f"y = {r.y:g}",
            ylabel="output a",
            ylim=(-0.02, 1.02),
        )
        top.legend(fontsize=8, frameon=False, loc="center right")
        bottom.set(xlabel="gradient-descent step (symlog)", ylabel="loss (log)", yscale="log")
        bottom.legend(fontsize=8, frameon=False)
        for ax in (top, bottom):
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(0, r.steps)
    fig.suptitle(
        f"One sigmoid neuron, same learning rate η = {r.learning_rate:g} for both losses",
        fontsize=11,
    )
    return _save(fig, path)


def draw_race(r: Race, path: Path) -> Path:
    """Validation accuracy per step at each loss's chosen learning rate."""
    datasets = list(dict.fromkeys(run.dataset for run in r.runs))
    inits = list(dict.fromkeys(run.init for run in r.runs))
    fig = _figure(10, 3.2 * len(datasets))
    axes = fig.subplots(len(datasets), len(inits), squeeze=False)
    steps = np.arange(r.steps + 1)
    for i, dataset in enumerate(datasets):
        for j, init in enumerate(inits):
            ax: Any = axes[i, j]
            target = r.get(dataset, init, "cross_entropy").target_accuracy
            for loss in ("cross_entropy", "mse"):
                run = r.get(dataset, init, loss)
                n = run.steps_to_target
                reached = f"{n} steps" if n is not None else "not reached"
                ax.plot(
                    steps,
                    run.val_accuracy,
                    color=COLOR[loss],
                    lw=2,
                    label=f"{LABEL[loss]} (η = {run.learning_rate:g}): {reached}",
                )
                if n is not None:
                    ax.plot([n], [run.val_accuracy[n]], "o", color=COLOR[loss], ms=6)
            ax.axhline(target, color="black", lw=0.7, ls="--")
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(0, r.steps)
            ax.set_ylim(0, 1.01)
            ax.set(
                title=f"{dataset.replace('_', ' ')}, {init} init (target {target:.0%})",
                xlabel="step (symlog)",
                ylabel="validation accuracy",
            )
            ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _save(fig, path)


def draw_checks(r: DerivationChecks, path: Path) -> Path:
    """Max absolute error of each formula, per reference (log scale)."""
    names = list(dict.fromkeys(c.name for c in r.checks))
    refs = list(dict.fromkeys(c.reference for c in r.checks))
    fig = _figure(10, 0.45 * len(names) + 1.4)
    ax = fig.subplots()
    height = 0.8 / len(refs)
    colors = ["#56B4E9", "#CC79A7"]
    floor = 1e-18  # an exact 0 is drawn at the floor
    for k, ref in enumerate(refs):
        errs = [
            next(c.max_abs_error for c in r.checks if c.name == n and c.reference == ref)
            for n in names
        ]
        ypos = np.arange(len(names)) + k * height
        ax.barh(
            ypos,
            [max(e, floor) for e in errs],
            height=height,
            color=colors[k % 2],
            label=f"vs {ref}",
            left=floor,
        )
    ax.set_xscale("log")
    ax.set_xlim(floor, 1e-3)
    ax.set_yticks(np.arange(len(names)) + height * (len(refs) - 1) / 2, names)
    ax.invert_yaxis()
    ax.set_xlabel("max |article's formula − reference|  (log scale; float64)")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _save(fig, path)


def draw_identities(identities: tuple[Identity, ...], path: Path, rows: int = 15) -> Path:
    """H(p, q) = H(p) + KL(p‖q) as stacked bars, on the ``rows`` test samples with the largest
    H(p, q) (most samples are near 0 nats: both models are confident and agree)."""
    ident = next(i for i in identities if i.per_sample)
    per = ident.per_sample
    picked = np.sort(np.argsort(per["cross_entropy"], kind="stable")[::-1][:rows])
    h, kl, hpq = per["entropy"][picked], per["kl"][picked], per["cross_entropy"][picked]
    x = np.arange(picked.size)
    fig = _figure(10, 3.4)
    ax = fig.subplots()
    ax.bar(x, h, color="#009E73", label="H(p)")
    ax.bar(x, kl, bottom=h, color="#CC79A7", label="KL(p ‖ q)")
    ax.plot(x, hpq, "k_", ms=22, mew=2, label="H(p, q), computed directly")
    ax.set_xticks(x, [str(i) for i in picked])
    ax.set(
        xlabel=f"digits test sample (the {picked.size} with the largest H(p, q))",
        ylabel="nats",
        title="cross-entropy = entropy + KL divergence, sample by sample",
    )
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)
