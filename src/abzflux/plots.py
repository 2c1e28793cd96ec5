"""Figures for a run (matplotlib, headless). Each function writes a PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

FLUX_LABEL = {"gpp": "GPP", "reco": "Reco", "nee": "NEE"}


def _save(fig, path: Path | None):
    if path is None:  # the caller (the report) renders the figure itself
        return fig
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def obs_vs_pred(pred: pd.DataFrame, metrics: dict, path, color_by: str = "biome", held_out: str = "LOSO") -> Path:
    """Leave-one-site-out (``held_out``: how the y axis names them) predictions against
    observations, one panel per flux."""
    fluxes = [f for f in ("gpp", "reco", "nee") if f in set(pred.flux)]
    fig, axes = plt.subplots(1, len(fluxes), figsize=(4.2 * len(fluxes), 4.2), squeeze=False)
    for ax, f in zip(axes[0], fluxes):
        d = pred[pred.flux == f]
        groups = d[color_by].fillna("NA").astype(str) if color_by in d else pd.Series("all", index=d.index)
        for g in sorted(groups.unique()):
            m = groups == g
            ax.scatter(d.obs[m], d.pred[m], s=4, alpha=0.4, label=g)
        lo, hi = float(min(d.obs.min(), d.pred.min())), float(max(d.obs.max(), d.pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        mm = metrics.get(f, {})
        ax.set_title(
            f"{FLUX_LABEL[f]}: R² {mm.get('caret_Rsquared', np.nan):.2f}, "
            f"RMSE {mm.get('caret_RMSE', np.nan):.1f} (site mean)",
            fontsize=9,
        )
        ax.set_xlabel("observed (g C m-2 month-1)")
        ax.set_ylabel(f"{held_out} predicted (g C m-2 month-1)")
        ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    return _save(fig, path)


def importance_bars(imp: pd.DataFrame, path) -> Path:
    """Permutation importance (RMSE increase) per predictor and flux, with SD."""
    fluxes = [f for f in ("gpp", "reco", "nee") if f in set(imp.flux)]
    fig, axes = plt.subplots(1, len(fluxes), figsize=(4.2 * len(fluxes), 4.8), squeeze=False)
    for ax, f in zip(axes[0], fluxes):
        d = imp[imp.flux == f].sort_values("importance")
        ax.barh(d.predictor, d.importance, xerr=d.importance_sd.fillna(0), color="tab:green")
        ax.set_title(f"{FLUX_LABEL[f]}", fontsize=10)
        ax.set_xlabel("RMSE increase when permuted (g C m-2 month-1)")
        ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def partial_dependence_panels(pdp: pd.DataFrame, flux: str, path) -> Path:
    """Partial dependence of one flux on every predictor (lines; points for factors)."""
    d = pdp[pdp.flux == flux]
    preds = list(dict.fromkeys(d.predictor))
    ncol = 6
    nrow = int(np.ceil(len(preds) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.2 * nrow), squeeze=False)
    for ax, p in zip(axes.ravel(), preds):
        g = d[d.predictor == p]
        if bool(g.categorical.iloc[0]):
            ax.plot(range(len(g)), g.yhat, "o", ms=3)
            ax.set_xticks(range(len(g)))
            ax.set_xticklabels([f"{v:g}" for v in g.value], rotation=90, fontsize=6)
        else:
            ax.plot(g.value, g.yhat, "-")
        ax.set_title(p, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(preds) :]:
        ax.axis("off")
    fig.suptitle(f"Partial dependence of {FLUX_LABEL[flux]} (g C m-2 month-1)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
