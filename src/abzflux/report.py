"""The study report: the paper's figures and tables from a finished run, in one HTML page.

``write_report(RUN)`` reads only the run directory (plus the zones file named in ``run.json``
for the coastline) and writes

- ``RUN/report/<figure>.png`` and ``.pdf`` for every figure,
- ``RUN/report.html``: every figure embedded as base64 PNG with its caption, and the tables;
  no external resource, so it opens offline and can be mailed as one file.

Figures whose inputs are absent are left out (fire figures without ``RUN/fire/``, comparison
and extrapolation figures without ``RUN/compare/``, the coarse series without
``RUN/coarse/``). Everything is written to temporary names and renamed at the end, so a failing
report never leaves a half-written page and never touches the run's own outputs.
"""

from __future__ import annotations

import base64
import calendar
import html
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import ascii_lowercase

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import _atomic, plots  # noqa: E402
from . import layout as L  # noqa: E402
from .domain import CRS_EPSG, base_grid  # noqa: E402
from .errors import InputError  # noqa: E402
from .formats import grid_crs  # noqa: E402
from .layout import RunLayout  # noqa: E402
from .predictors import from_declaration  # noqa: E402
from .summary import METHOD_TEXT, label_of, order  # noqa: E402
from .vocab import CV_LABELS, FLUX_UNITS, FLUXES  # noqa: E402

log = logging.getLogger(__name__)

LABEL = {"gpp": "GPP", "reco": "Reco", "nee": "NEE", "nee_fire": "NEE + fire", "nee_derived": "Reco − GPP"}
REGIONS = ("alaska", "canada", "europe", "siberia")
BIOMES = ("boreal", "tundra")
OVERLAY_NAMES = ("sink ↑ by GPP", "sink ↑ by Reco", "source ↑ by Reco", "source ↑ by GPP")
# MESS classes (spec section 9, with the code's overlapping breaks made disjoint; < 0 = extrapolation)
MESS_LABELS = ("≤ −80", "−80 to −20", "−20 to < 0", "0 to 5", "> 5")
DPI = 100


@dataclass
class Item:
    """One figure or table of the report."""

    id: str
    section: str
    title: str
    caption: str
    fig: object = None  # a matplotlib figure (rendered to PNG + PDF by write_report)
    table_html: str | None = None
    png: bytes | None = None


@dataclass
class Report:
    run: Path
    items: list[Item] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    path: Path | None = None


# --------------------------------------------------------------------------- run access
class RunData:
    """Lazy, cached access to a run directory's outputs."""

    def __init__(self, run: Path):
        self.run = Path(run)
        self.layout = RunLayout(self.run)
        if not self.layout.budgets_annual.exists():
            raise InputError(
                str(self.run),
                "not a finished run: budgets_annual.csv is missing",
                expected="a run directory written by `abzflux run`",
            )
        rec = self.layout.run_json
        self.record = json.loads(rec.read_text()) if rec.exists() else {}
        self._cache: dict = {}

    def has(self, rel: str) -> bool:
        return (self.layout / rel).exists()

    def csv(self, rel: str, **kw) -> pd.DataFrame:
        key = ("csv", rel)
        if key not in self._cache:
            self._cache[key] = pd.read_csv(self.layout / rel, **kw)
        return self._cache[key]

    def annual(self) -> pd.DataFrame:
        return self.csv(L.BUDGETS_ANNUAL)

    def years(self) -> tuple[int, int]:
        a = self.annual()
        return int(a.year.min()), int(a.year.max())

    def period(self) -> str:
        y0, y1 = self.years()
        return f"{y0}–{y1}"

    def upscaled(self) -> xr.Dataset:
        if "up" not in self._cache:
            self._cache["up"] = xr.open_zarr(self.layout.upscaled, consolidated=False)
        return self._cache["up"]

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        up = self.upscaled()
        return up.x.values.astype(float), up.y.values.astype(float)

    def land(self) -> np.ndarray:
        """Land fraction on the run's grid (from the zones file named in run.json; if that has
        moved, the upscaled cells with a value stand in)."""
        if "land" not in self._cache:
            lf = None
            z = self.record.get("config", {}).get("inputs", {}).get("zones")
            if z:
                p = Path(z)
                if not p.is_absolute() and self.record.get("config_file"):
                    p = Path(self.record["config_file"]).parent / p
                if p.exists():
                    with xr.open_dataset(p) as ds:
                        if "land_fraction" in ds and ds.land_fraction.shape == self.upscaled().nee.shape[1:]:
                            lf = np.nan_to_num(ds.land_fraction.values.astype(float))
            if lf is None:
                lf = self.upscaled().nee.isel(time=0).notnull().values.astype(float)
            self._cache["land"] = lf
        return self._cache["land"]

    def coastline(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, land fraction) to contour at 0.5 for the outline: the shipped 10-km domain mask
        (land north of 49°N without lakes and ice) when the run's grid is in its CRS (EPSG:6931),
        else the run's own land fraction. Nothing is downloaded."""
        if "coast" not in self._cache:
            x, y = self.grid()
            coast = (x, y, self.land())
            try:
                if grid_crs(self.upscaled(), self.layout.upscaled).to_epsg() == CRS_EPSG:
                    b = base_grid()
                    # 20-km block mean: a clean outline without every 10-km lake
                    lf = b["land_fraction"].astype(float)
                    ny, nx = (s // 2 * 2 for s in lf.shape)
                    lf = lf[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3))
                    bx = b["x"][:nx].reshape(-1, 2).mean(1)
                    by = b["y"][:ny].reshape(-1, 2).mean(1)
                    coast = (bx, by, lf)
            except (InputError, KeyError, ValueError, OSError):
                pass
            self._cache["coast"] = coast
        return self._cache["coast"]

    def mean_annual(self, var: str) -> np.ndarray:
        """Mean over complete years of the annual sum (g C m-2 yr-1)."""
        key = ("ma", var)
        if key not in self._cache:
            da = self.upscaled()[var]
            self._cache[key] = np.asarray(da.groupby("time.year").sum(min_count=12).mean("year").values, float)
        return self._cache[key]

    def trend_maps(self) -> xr.Dataset:
        if "tm" not in self._cache:
            self._cache["tm"] = xr.open_zarr(self.layout.trend_maps, consolidated=False)
        return self._cache["tm"]

    def sites(self) -> pd.DataFrame:
        if "sites" not in self._cache:
            self._cache["sites"] = pd.read_parquet(self.layout.sites)
        return self._cache["sites"]


# --------------------------------------------------------------------------- drawing helpers
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _extent(land: np.ndarray, x: np.ndarray, y: np.ndarray, pad: int = 1):
    iy, ix = np.nonzero(land > 0)
    if len(iy) == 0:
        return None
    xs = np.sort(x[max(ix.min() - pad, 0) : ix.max() + pad + 1])
    ys = np.sort(y[max(iy.min() - pad, 0) : iy.max() + pad + 1])
    dx = abs(x[1] - x[0]) if len(x) > 1 else 1.0
    return xs[0] - dx, xs[-1] + dx, ys[0] - dx, ys[-1] + dx


def _map(
    ax,
    rd: RunData,
    data,
    *,
    cmap="viridis",
    norm=None,
    vmin=None,
    vmax=None,
    title="",
    label="",
    colorbar=True,
    x=None,
    y=None,
):
    """One polar map in the grid's equal-area x/y (km), with the land outline from land_fraction."""
    gx, gy = rd.grid()
    x = gx if x is None else x
    y = gy if y is None else y
    land = rd.land()
    im = None
    if data is not None:
        im = ax.pcolormesh(
            x / 1e3,
            y / 1e3,
            np.ma.masked_invalid(data),
            shading="nearest",
            cmap=cmap,
            norm=norm,
            vmin=None if norm is not None else vmin,
            vmax=None if norm is not None else vmax,
            rasterized=True,
        )
    cx, cy, cl = rd.coastline()
    if np.nanmax(cl) > 0.5 > np.nanmin(cl):
        ax.contour(cx / 1e3, cy / 1e3, cl, levels=[0.5], colors="0.25", linewidths=0.5)
    ext = _extent(land, gx, gy)
    if ext is not None:
        ax.set_xlim(ext[0] / 1e3, ext[1] / 1e3)
        ax.set_ylim(ext[2] / 1e3, ext[3] / 1e3)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    if colorbar and im is not None:
        _cbar(im, ax, label)
    return im


def _cbar(mappable, ax, label: str):
    cb = plt.colorbar(mappable, ax=ax, shrink=0.75, pad=0.02)
    cb.set_label(label, fontsize=7)
    cb.ax.tick_params(labelsize=7)
    return cb


def _classes(ax, rd: RunData, codes, labels, colors, title, x=None, y=None, fontsize=7):
    """A categorical map: integer codes 0..n-1 (NaN = none), one labelled colour per class."""
    n = len(labels)
    im = _map(
        ax,
        rd,
        codes,
        cmap=ListedColormap(list(colors)[:n]),
        norm=BoundaryNorm(np.arange(n + 1) - 0.5, n),
        title=title,
        colorbar=False,
        x=x,
        y=y,
    )
    cb = plt.colorbar(im, ax=ax, shrink=0.75, pad=0.02, ticks=range(n))
    cb.ax.set_yticklabels(labels, fontsize=fontsize)
    return im


def mess_classes(m: np.ndarray) -> np.ndarray:
    """MESS (%) -> class 0..4: ≤ −80 | (−80, −20] | (−20, 0) | [0, 5] | > 5; NaN stays NaN."""
    m = np.asarray(m, float)
    c = np.select([m <= -80, m <= -20, m < 0, m <= 5], [0, 1, 2, 3], 4).astype(float)
    return np.where(np.isfinite(m), c, np.nan)


def _tab(n):
    return [plt.get_cmap("tab20" if n > 10 else "tab10")(i) for i in range(n)]


def _sym(*arrays, q=98) -> float:
    v = np.concatenate([np.abs(np.asarray(a, float)).ravel() for a in arrays if a is not None])
    v = v[np.isfinite(v)]
    m = float(np.percentile(v, q)) if len(v) else 1.0
    return m if m > 0 else 1.0


def _series(ax, df: pd.DataFrame, zone: str, flux: str, color: str, label: str):
    d = df[(df.zone == zone) & (df.flux == flux)].sort_values("year")
    if d.empty:
        return False
    ax.plot(d.year, d.tg_c, color=color, lw=1.4, label=label)
    col = "tg_c_sd_total" if "tg_c_sd_total" in d and d.tg_c_sd_total.notna().any() else "tg_c_sd"
    if col in d and d[col].notna().any():  # the total ± when the run adds terms to the bootstrap SD
        ax.fill_between(d.year, d.tg_c - d[col], d.tg_c + d[col], color=color, alpha=0.2, lw=0)
    return True


def _band_text(rd: RunData) -> str:
    """What the budget bands show: the bootstrap SD, or the total ± with the terms the run adds."""
    ann = rd.annual()
    if "tg_c_sd_total" not in ann or not ann.tg_c_sd_total.notna().any():
        return "± SD across the bootstrap forests"
    terms = [t for c, t in (("tg_c_sd_extrap", "extrapolation"), ("tg_c_sd_network", "network-simulation")) if c in ann]
    noun = "term" if len(terms) == 1 else "terms"
    return f"± total (SD across the bootstrap forests with the {' and '.join(terms)} {noun} in quadrature)"


def _budget_panel(ax, rd: RunData, zone: str, title: str) -> list[str]:
    ann = rd.annual()
    shown = []
    if _series(ax, ann, zone, "nee", "tab:blue", "NEE"):
        shown.append("NEE")
    if rd.has(f"{L.COARSE}/{L.BUDGETS_ANNUAL}") and _series(
        ax, rd.csv(f"{L.COARSE}/{L.BUDGETS_ANNUAL}"), zone, "nee", "0.45", "NEE, coarse model set"
    ):
        shown.append("coarse NEE")
    if _series(ax, ann, zone, "nee_fire", "tab:red", "NEE + fire"):
        shown.append("NEE + fire")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("Tg C yr-1", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return shown


# --------------------------------------------------------------------------- figures
def fig1_maps(rd: RunData) -> list[Item]:
    x, y = rd.grid()
    ma = rd.mean_annual("nee")
    tm = rd.trend_maps()
    slope, p = tm["nee_annual_slope"].values, tm["nee_annual_p"].values
    sites = rd.sites()
    ins = _site_mean_annual(sites)
    st = rd.csv(L.SITE_TRENDS) if rd.has(L.SITE_TRENDS) else pd.DataFrame()
    prod = None
    if rd.has(L.PRODUCT_MAPS):
        prod = xr.open_zarr(rd.layout.product_maps, consolidated=False)
    names = [str(n) for n in prod["product"].values] if prod is not None else []
    ncol = 2 + len(names)
    fig, axes = plt.subplots(2, ncol, figsize=(4.0 * ncol, 7.4), squeeze=False)
    vm = _sym(ma, ins.nee.values if len(ins) else None)
    vt = _sym(slope)
    norm_m = TwoSlopeNorm(0, -vm, vm)
    norm_t = TwoSlopeNorm(0, -vt, vt)
    site_xy = _site_xy(rd, sites)
    top, bottom = ascii_lowercase[:ncol], ascii_lowercase[ncol : 2 * ncol]  # panel letters row by row
    _map(axes[0, 0], rd, None, title=f"{top[0]}  sites: mean annual NEE")
    if len(ins):
        xy = site_xy.loc[ins.site_id]
        sc = axes[0, 0].scatter(
            xy.x / 1e3, xy.y / 1e3, c=ins.nee, cmap="RdBu_r", norm=norm_m, s=14, edgecolors="k", linewidths=0.3
        )
        _cbar(sc, axes[0, 0], "g C m-2 yr-1")
    else:
        _no_data(axes[0, 0], "no site with a complete (12-month) NEE year")
    _map(
        axes[0, 1],
        rd,
        ma,
        cmap="RdBu_r",
        norm=norm_m,
        title=f"{top[1]}  upscaled: mean annual NEE",
        label="g C m-2 yr-1",
    )
    _map(axes[1, 0], rd, None, title=f"{bottom[0]}  sites (> 7 years): NEE trend")
    if len(st):
        xy = site_xy.loc[st.site_id]
        sig = (st.p < 0.05).to_numpy()
        sc = axes[1, 0].scatter(
            xy.x / 1e3,
            xy.y / 1e3,
            c=st.slope,
            cmap="RdBu_r",
            norm=norm_t,
            s=np.where(sig, 30, 14),
            edgecolors=np.where(sig, "k", "0.6"),
            linewidths=np.where(sig, 1.0, 0.3),
        )
        _cbar(sc, axes[1, 0], "g C m-2 yr-2")
    else:
        _no_data(axes[1, 0], "no site with > 7 full years")
    _map(
        axes[1, 1],
        rd,
        slope,
        cmap="RdBu_r",
        norm=norm_t,
        title=f"{bottom[1]}  upscaled: NEE trend",
        label="g C m-2 yr-2",
    )
    sy, sx = np.nonzero(np.nan_to_num(p, nan=1.0) < 0.05)
    axes[1, 1].scatter(x[sx] / 1e3, y[sy] / 1e3, s=0.6, c="k", marker=".", lw=0)
    for j, n in enumerate(names):
        d = prod.sel(product=n)
        px, py = d.x.values.astype(float), d.y.values.astype(float)
        _map(
            axes[0, 2 + j],
            rd,
            d["mean_annual"].values,
            cmap="RdBu_r",
            norm=norm_m,
            x=px,
            y=py,
            title=f"{top[2 + j]}  {n}: mean annual NEE",
            label="g C m-2 yr-1",
        )
        _map(
            axes[1, 2 + j],
            rd,
            d["trend"].values,
            cmap="RdBu_r",
            norm=norm_t,
            x=px,
            y=py,
            title=f"{bottom[2 + j]}  {n}: NEE trend",
            label="g C m-2 yr-2",
        )
    fig.tight_layout()
    cap = (
        f"Mean annual NEE (top, g C m-2 yr-1) and its Theil–Sen trend (bottom, g C m-2 yr-2), {rd.period()}. "
        f"Sites: mean of site-years with 12 months ({len(ins)} sites); site trends for sites with more than "
        f"7 full years ({len(st)} sites; black outline: Mann–Kendall p < 0.05). Upscaled: the NEE forest's "
        "monthly maps summed per year; dots mark cells with p < 0.05 (Zhang prewhitening). "
        + (
            f"Reference products: {_product_years(rd, names)} (RUN/compare/product_maps.zarr), drawn on the "
            "analysis grid (the correlations in the comparison table are on each product's own grid), same "
            "colour scales. "
            if names
            else "No reference products in this run. "
        )
        + "Negative = uptake. Equal-area polar projection of the run's grid; outline: the shipped land mask "
        "(0.5 contour)."
    )
    return [Item("fig1", "Fig. 1", "Fig. 1: mean annual NEE and its trend", cap, fig=fig)]


def _comparison_caption(m: pd.DataFrame) -> str:
    """The comparison table's caption: on which grid the maps were correlated, and the p-values."""
    grid = str(m["grid"].iloc[0]) if "grid" in m and len(m) else "analysis"
    where = (
        "on each product's own grid (product_grid: abzflux's annual sums aggregated conservatively onto a "
        "lat/lon product's cells, land-area weighted, cells with less than compare.min_cover of their land "
        "covered dropped; a product on the analysis grid is compared there)"
        if grid == "product"
        else 'on the analysis grid (compare.grid = "analysis": products regridded onto it, so each coarse '
        "value counts in many cells and the naive p is too small)"
    )
    return (
        "Per reference product: Pearson r of the mean annual NEE maps and of the per-cell trend maps against "
        f"abzflux over the common years, {where}; n_cells cells, map_p / trend_p from Dutilleul's modified "
        "t-test (effective sample size n_eff for spatial autocorrelation), *_p_naive the plain t-test; "
        "source-area shares on the analysis grid (RUN/compare/metrics.csv)."
    )


def _product_years(rd: RunData, names: list[str]) -> str:
    """'name first–last' per product from compare/metrics.csv (just the names without it)."""
    if not rd.has(L.COMPARE_METRICS):
        return ", ".join(names)
    m = rd.csv(L.COMPARE_METRICS).set_index("product")
    return ", ".join(
        f"{n} {int(m.loc[n, 'first_year'])}–{int(m.loc[n, 'last_year'])}" if n in m.index else n for n in names
    )


def _site_mean_annual(sites: pd.DataFrame) -> pd.DataFrame:
    """Per site: mean over its site-years with all 12 months of the annual NEE sum."""
    from .budgets import insitu_annual

    if "nee" not in sites:
        return pd.DataFrame(columns=["site_id", "nee"])
    a = insitu_annual(sites, "nee")
    return a.groupby("site_id").annual.mean().rename("nee").reset_index()


def _site_xy(rd: RunData, sites: pd.DataFrame) -> pd.DataFrame:
    x, y = rd.grid()
    s = sites.groupby("site_id")[["iy", "ix"]].first()
    return pd.DataFrame({"x": x[s.ix.to_numpy()], "y": y[s.iy.to_numpy()]}, index=s.index)


def fig2_budgets(rd: RunData) -> list[Item]:
    fire = rd.has("fire/burned_cells.nc")
    fig, axes = plt.subplots(2, 2, figsize=(11, 9))
    s_a = _budget_panel(axes[0, 0], rd, "domain", "a  Arctic–boreal zone")
    _budget_panel(axes[0, 1], rd, "permafrost", "b  permafrost region")
    axes[0, 0].legend(fontsize=7)
    tm = rd.trend_maps()
    cls = tm["nee_trend_attribution"].values.astype(float)
    cls[cls <= 0] = np.nan  # 0 = no NEE trend / water
    _classes(
        axes[1, 0],
        rd,
        cls - 1,
        OVERLAY_NAMES,
        ["#2166ac", "#67a9cf", "#ef8a62", "#b2182b"],
        "c  what drives the NEE trend",
    )
    if fire:
        with xr.open_dataset(rd.layout.burned_cells) as b:
            last = b["last_burn_year"].values.astype(float)
            bx, by = b.x.values.astype(float), b.y.values.astype(float)
        fp = json.loads(rd.layout.fire_json.read_text())["fire_period"]
        im = _map(
            axes[1, 1],
            rd,
            np.where(last > 0, last, np.nan),
            cmap="plasma",
            x=bx,
            y=by,
            title="d  burned cells (year of the last fire)",
            colorbar=False,
        )
        if im is not None:
            plt.colorbar(im, ax=axes[1, 1], shrink=0.75, format="%d").set_label("year", fontsize=7)
    else:
        axes[1, 1].axis("off")
        _no_data(axes[1, 1], "d  no fire input in this run")
    fig.tight_layout()
    coarse = (
        f"coarse NEE (grey: the coarse model set, {_coarse_period(rd)}, RUN/coarse/budgets_annual.csv), "
        if "coarse NEE" in s_a
        else ""
    )
    fire_txt = "NEE + fire (red: NEE plus fire emissions), " if "NEE + fire" in s_a else ""
    cap = (
        f"Annual CO2 budgets (Tg C yr-1), {rd.period()}, of a the whole domain and b the permafrost region: "
        f"NEE (blue), {coarse}{fire_txt}bands = {_band_text(rd)} (fire carries no "
        "uncertainty). c: the GPP/Reco attribution of each cell's annual NEE trend (significant and non-"
        "significant alike): a strengthening sink from rising GPP or falling Reco, a strengthening source from "
        "rising Reco or falling GPP. "
        + (
            f"d: cells burned during the fire period {fp[0]}–{fp[1]}, coloured by the year of the last fire "
            "(RUN/fire/burned_cells.nc)."
            if fire
            else "No fire input in this run: no burned-cell map."
        )
    )
    return [Item("fig2", "Fig. 2", "Fig. 2: annual budgets, trend attribution and burned cells", cap, fig=fig)]


def _coarse_period(rd: RunData) -> str:
    c = rd.csv(f"{L.COARSE}/{L.BUDGETS_ANNUAL}")
    return f"{int(c.year.min())}–{int(c.year.max())}"


def fig3_monthly(rd: RunData) -> list[Item]:
    if not rd.has(L.DECADAL_MONTHLY):
        return []
    d = rd.csv(L.DECADAL_MONTHLY)
    periods = [p for p in dict.fromkeys(d.period) if p != "difference"]
    fig, axes = plt.subplots(3, 2, figsize=(10, 9), sharex=True)
    for i, f in enumerate(FLUXES):
        for j, b in enumerate(BIOMES):
            ax = axes[i, j]
            for k, per in enumerate(periods):
                g = d[(d.flux == f) & (d.zone == b) & (d.period == per)].sort_values("month")
                ax.errorbar(
                    g.month + (k - 0.5) * 0.15,
                    g.g_c_m2_month,
                    yerr=g.sd_bootstrap if "sd_bootstrap" in g else None,
                    marker="o",
                    ms=3,
                    lw=1.2,
                    capsize=2,
                    color=("tab:blue", "tab:orange")[k % 2],
                    label=per,
                )
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(f"{LABEL[f]}, {b}", fontsize=9)
            ax.set_ylabel(FLUX_UNITS, fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xticks(range(1, 13))
        ax.set_xlabel("month", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    cap = (
        f"Mean monthly NEE, GPP and Reco (area-weighted density, g C m-2 month-1) of the boreal and tundra "
        f"biomes in {' and '.join(periods)}; error bars = SD across the bootstrap forests of each decade's mean "
        "(RUN/budgets/decadal_monthly.csv)."
    )
    return [Item("fig3", "Fig. 3", "Fig. 3: monthly fluxes by biome, first vs last decade", cap, fig=fig)]


def fig4_regions(rd: RunData) -> list[Item]:
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharex=True)
    shown = []
    for i, b in enumerate(BIOMES):
        for j, r in enumerate(REGIONS):
            shown = _budget_panel(axes[i, j], rd, f"{b}/{r}", f"{b}, {r}") or shown
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    cap = (
        f"Annual budgets (Tg C yr-1), {rd.period()}, of the boreal (top) and tundra (bottom) parts of Alaska, "
        f"Canada, Europe and Siberia: {', '.join(shown)}; bands = {_band_text(rd)} "
        "(RUN/budgets_annual.csv"
        + (f"; coarse model set {_coarse_period(rd)}, RUN/coarse/budgets_annual.csv" if "coarse NEE" in shown else "")
        + ")."
    )
    return [Item("fig4", "Fig. 4", "Fig. 4: regional budgets", cap, fig=fig)]


def _central_note(info: dict) -> str:
    """The forests' central value when it is not the mean of the trees (models/forest.json)."""
    central = {v.get("central", "mean") for v in info.values()}
    return "" if central == {"mean"} else f" Predictions: the quantile forest's median ({', '.join(sorted(central))})."


def _site_oob(info: dict) -> dict | None:
    """The site_oob settings when the run's CV was grouped out-of-bag (models/forest.json), else None."""
    for v in info.values():
        if v.get("cv_mode") == "site_oob":
            return v
    return None


def _site_oob_note(rd: RunData) -> str:
    """A caption's note, in a site_oob run, that its "leave-one-site-out" predictions are grouped out-of-bag."""
    if not rd.layout.forest_json.exists():
        return ""
    v = _site_oob(json.loads(rd.layout.forest_json.read_text()))
    if v is None:
        return ""
    return (
        f" This run's held-out predictions are {CV_LABELS['site_oob']}, not exact leave-one-site-out: each "
        f"site-month is predicted by the trees, of one {v['oob_trees']}-tree forest per mtry, grown without its "
        f'site (each tree left out a random {v["oob_site_fraction"]:.0%} of the sites; forest.cv = "site_oob", '
        "docs/models.md)."
    )


def fig_skill(rd: RunData) -> list[Item]:
    if not rd.has(L.CV_PREDICTIONS):
        return []
    info = json.loads(rd.layout.forest_json.read_text())
    pred = pd.read_parquet(rd.layout.cv_predictions)
    chosen = pred.merge(pd.DataFrame([{"flux": f, "mtry": v["mtry"]} for f, v in info.items()]), on=["flux", "mtry"])
    oob = _site_oob(info) is not None
    fig = plots.obs_vs_pred(
        chosen, {f: v.get("cv", {}) for f, v in info.items()}, None, held_out="grouped OOB" if oob else "LOSO"
    )
    mtry = ", ".join(f"{f} {v['mtry']}" for f, v in info.items())
    how = (
        "Grouped out-of-bag cross-validation: each site-month predicted by the trees that never saw its site"
        if oob
        else "Leave-one-site-out cross-validation: each site-month predicted by a forest trained without its site"
    )
    cap = (
        f"{how}, "
        "against the observation (g C m-2 month-1), coloured by biome; title: caret-style site-mean R² and RMSE "
        f"at the chosen mtry ({mtry}); site-months "
        f"{int(chosen.year.min())}–{int(chosen.year.max())} (RUN/cv/predictions.parquet)."
        + _central_note(info)
        + _site_oob_note(rd)
    )
    items = [Item("skill", "Model skill", "Model skill: observed vs predicted", cap, fig=fig)]
    if rd.has(L.CV_SKILL):
        s = rd.csv(L.CV_SKILL)
        items.append(
            Item(
                "skill_table",
                "Model skill",
                "Cross-validated skill (pooled and site-mean)",
                f"Skill of the {CV_LABELS['site_oob' if oob else 'loso']} predictions (RUN/cv/skill.csv); RMSE, "
                "MAE and bias in g C m-2 month-1.",
                table_html=_table(s),
            )
        )
    return items


def sensitivity_table(rd: RunData) -> list[Item]:
    """The sensitivity runs' skill side by side (``abzflux sensitivity``; RUN/sensitivity/), when run."""
    if not rd.has(L.SENSITIVITY_TABLE):
        return []
    s = pd.read_csv(rd.layout / L.SENSITIVITY_TABLE, keep_default_na=False, na_values=[""])
    t = pd.DataFrame(
        {
            "variant": s.variant,
            "flux": s.flux,
            "rows": s.rows.map(lambda v: "–" if pd.isna(v) else f"{int(v)}"),
            "sites": s.sites.map(lambda v: "–" if pd.isna(v) else f"{int(v)}"),
            "predictors": s.predictors,
            "mtry": s.mtry.map(lambda v: "–" if pd.isna(v) else f"{int(v)}"),
            "R²": s.r2.round(2),
            "RMSE": s.rmse.round(1),
            "MAE": s.mae.round(1),
            "bias": s.bias.round(1),
        }
    )
    notes = "; ".join(
        f"{v}: {d}" for v, d in s.drop_duplicates("variant")[["variant", "description"]].itertuples(index=False)
    )
    return [
        Item(
            "sensitivity",
            "Model skill",
            "Sensitivity runs (Supplementary Table 5)",
            "Leave-one-site-out skill of the forests trained on variants of this run's config "
            "(`abzflux sensitivity`; RUN/sensitivity/sensitivity.csv): caret site-mean R², RMSE and MAE, pooled "
            f"bias (g C m-2 month-1). {notes}.",
            table_html=_table(t),
        )
    ]


def _predictor_set_note(rd: RunData) -> str:
    """A caption note naming the predictors when the run's [predictors] section changed the paper's set."""
    d = rd.record.get("config", {}).get("predictors") or {}
    if not (d.get("use") or d.get("drop") or d.get("declare")):
        return ""
    pset = from_declaration(d.get("use"), d.get("drop"), d.get("declare") or {}, rd.layout.run_json)
    renamed = [f"{p.name} from {p.stack_name}" for p in pset.predictors if p.stack_name != p.name]
    return f" Predictors (the run's declared set, {len(pset)}): {', '.join(pset.names)}" + (
        f"; read as {', '.join(renamed)}." if renamed else "."
    )


def fig_interpret(rd: RunData) -> list[Item]:
    items = []
    if rd.has(L.IMPORTANCE):
        imp = rd.csv(L.IMPORTANCE)
        fig = plots.importance_bars(imp, None)
        items.append(
            Item(
                "importance",
                "Importance and partial dependence",
                "Permutation importance",
                "Increase of the final forest's RMSE (g C m-2 month-1) on the training rows when one "
                "predictor is permuted; bars = mean, whiskers = SD over the permutation repeats "
                f"(RUN/interpret/importance.csv).{_predictor_set_note(rd)}",
                fig=fig,
            )
        )
    if rd.has(L.PARTIAL_DEPENDENCE):
        pdp = rd.csv(L.PARTIAL_DEPENDENCE)
        for f in FLUXES:
            if f in set(pdp.flux):
                fig = plots.partial_dependence_panels(pdp, f, None)
                items.append(
                    Item(
                        f"pdp_{f}",
                        "Importance and partial dependence",
                        f"Partial dependence of {LABEL[f]}",
                        f"Partial dependence of the final {LABEL[f]} forest's prediction "
                        "(g C m-2 month-1) on each predictor, averaged over the training rows "
                        "(RUN/interpret/partial_dependence.csv); factors as points.",
                        fig=fig,
                    )
                )
    return items


def fig_fire(rd: RunData) -> list[Item]:
    if not rd.has(L.EMISSIONS_BY_ZONE):
        return []
    em = rd.csv(L.EMISSIONS_BY_ZONE).set_index("year")
    regs = [r for r in REGIONS if r in em.columns]
    ann = rd.annual()
    nee = ann[(ann.zone == "domain") & (ann.flux == "nee")].set_index("year").tg_c.reindex(em.index)
    fig, ax = plt.subplots(figsize=(10, 4.2))
    bottom = np.zeros(len(em))
    for r, c in zip(regs, ("tab:orange", "tab:red", "tab:purple", "tab:brown")):
        ax.bar(em.index, em[r], bottom=bottom, color=c, label=r)
        bottom += em[r].fillna(0).to_numpy()
    ax.plot(em.index, -nee, "k-o", ms=3, lw=1.2, label="net uptake (−NEE), domain")
    ax.set_ylabel("Tg C yr-1")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, ncol=5)
    fig.tight_layout()
    y0, y1 = int(em.index.min()), int(em.index.max())
    cap = (
        f"Fire CO2 emissions by region (stacked, Tg C yr-1), {y0}–{y1}, from the fire input aggregated over each "
        "region (RUN/fire/emissions_by_zone.csv), and the domain's net uptake (−NEE, Tg C yr-1): years where the "
        "stack rises above the line are years in which fire offset the uptake."
    )
    items = [Item("fire_emissions", "Fire", "Fire emissions by region", cap, fig=fig)]
    if rd.has(L.BIAS_CORRECTION):
        items.append(
            Item(
                "fire_bias_table",
                "Fire",
                "Fire bias correction of the target year",
                "NEE budget (Tg C yr-1) of the target year before and after the years-since-fire bias "
                "correction (RUN/fire/bias_correction.csv).",
                table_html=_table(rd.csv(L.BIAS_CORRECTION)),
            )
        )
    return items


# ---------------------------------------------------------------- seasonal, driver and fire trends
TREND_ZONES = ("domain", "boreal", "tundra", "permafrost", "north_america", "eurasia")
TREND_FLUXES = ("nee", "gpp", "reco", "fire", "nee_fire")
DRIVER_LABEL = {
    "lst": "temperature (LST)",
    "soil_temp": "soil temperature",
    "srad": "solar radiation",
    "ndvi": "NDVI",
    "snow_cover": "snow cover",
    "soil_moisture": "soil moisture",
    "vpd": "VPD",
}


def _slope_p(r) -> str:
    """``slope`` with a star where p < 0.05 (3 significant digits)."""
    if pd.isna(r["slope"]):
        return ""
    return f"{r['slope']:.3g}" + ("*" if r["p"] < 0.05 else "")


def _trend_pivot(t: pd.DataFrame, rows: list[str], seasons: tuple[str, ...]) -> pd.DataFrame:
    t = t[t.season.isin(seasons)].assign(v=lambda d: d.apply(_slope_p, axis=1))
    w = t.pivot_table(index=rows, columns="season", values="v", aggfunc="first", sort=False)
    w = w.reindex(columns=[s for s in seasons if s in w.columns]).reset_index().fillna("")
    w.columns.name = None
    return w


def trend_season_tables(rd: RunData) -> list[Item]:
    """Budget trends by season and month (RUN/trends/seasonal_budget_trends.csv) and the drivers'
    trends by season (RUN/trends/driver_trends.csv)."""
    items = []
    if rd.has(L.SEASONAL_BUDGET_TRENDS):
        t = rd.csv(L.SEASONAL_BUDGET_TRENDS)
        t = t[t.zone.isin(TREND_ZONES) & t.flux.isin(TREND_FLUXES)]
        t = t.assign(
            zone=pd.Categorical(t.zone, TREND_ZONES, ordered=True),
            flux=pd.Categorical(t.flux, TREND_FLUXES, ordered=True),
        ).sort_values(["zone", "flux"], kind="stable")
        seas = _trend_pivot(t, ["zone", "flux"], ("annual", "jja", "nonsummer", "nonsummer_crossyear"))
        seas["flux"] = seas.flux.map(lambda f: LABEL.get(f, f))
        items.append(
            Item(
                "budget_trends_seasons",
                "Trends",
                f"Budget trends by season, {rd.period()}",
                "Theil–Sen slope of each zone's budget per season (Tg C yr-2; * = Mann–Kendall p < 0.05, "
                "prewhitening as [trends]): annual, JJA (June–August), non-summer within the calendar year "
                "(January–May + September–December, annual = JJA + non-summer) and the cross-year "
                "September–May (labelled by its May). Fire and NEE + fire over the fire years "
                "(RUN/trends/seasonal_budget_trends.csv).",
                table_html=_table(seas),
            )
        )
        m = t[t.flux.isin(("nee", "gpp", "reco")) & t.zone.isin(("domain", "boreal", "tundra"))]
        mon = _trend_pivot(m, ["zone", "flux"], tuple(f"m{i:02d}" for i in range(1, 13)))
        mon["flux"] = mon.flux.map(lambda f: LABEL.get(f, f))
        mon = mon.rename(columns={f"m{i:02d}": calendar.month_abbr[i] for i in range(1, 13)})
        items.append(
            Item(
                "budget_trends_months",
                "Trends",
                f"Budget trends by calendar month, {rd.period()}",
                "Theil–Sen slope of each month's budget (Tg C month-1 per year; * = p < 0.05), January to "
                "December, for the domain and the biomes (RUN/trends/seasonal_budget_trends.csv).",
                table_html=_table(mon),
            )
        )
    if rd.has(L.DRIVER_TRENDS):
        d = rd.csv(L.DRIVER_TRENDS)
        d = d[d.zone.isin(TREND_ZONES)]
        d = d.assign(zone=pd.Categorical(d.zone, TREND_ZONES, ordered=True)).sort_values(
            ["driver", "zone"], kind="stable"
        )
        units = d.groupby("driver").units.first()
        w = _trend_pivot(d, ["driver", "zone"], ("annual", "jja", "nonsummer", "mam", "son", "djf"))
        w.insert(1, "unit", w.driver.map(units))
        w["driver"] = w.driver.map(lambda v: DRIVER_LABEL.get(v, v))
        items.append(
            Item(
                "driver_trends",
                "Trends",
                f"Trends of the environmental drivers, {rd.period()}",
                "Theil–Sen slope (per year; * = Mann–Kendall p < 0.05) of each zone's land-area-weighted mean of "
                "the driver, from its monthly means averaged per season and year: annual, JJA, non-summer "
                "(the nine other months of the year), spring (MAM), autumn (SON) and winter (DJF, December "
                "from the year before). Monthly trends in RUN/trends/driver_trends.csv; the zone means in "
                "RUN/trends/driver_means.csv.",
                table_html=_table(w),
            )
        )
    return items


def fig_fire_trend(rd: RunData) -> list[Item]:
    """Per-cell trends of annual fire emissions and of NEE + fire (trend_maps.zarr)."""
    if not rd.layout.trend_maps.exists():
        return []
    tm = rd.trend_maps()
    if "fire_annual_slope" not in tm:
        return []
    x, y = rd.grid()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, name, title in (
        (axes[0], "fire_annual", "a  fire emissions: trend"),
        (axes[1], "nee_fire_annual", "b  NEE + fire: trend"),
    ):
        s = tm[f"{name}_slope"].values.astype(float)
        p = tm[f"{name}_p"].values.astype(float)
        v = _sym(s)
        _map(ax, rd, s, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -v, v), title=title, label="g C m-2 yr-2")
        sy, sx = np.nonzero(np.nan_to_num(p, nan=1.0) < 0.05)
        ax.scatter(x[sx] / 1e3, y[sy] / 1e3, s=0.6, c="k", marker=".", lw=0)
    fig.tight_layout()
    a = tm["fire_annual_slope"].attrs
    yrs = f"{a.get('first_year', '')}–{a.get('last_year', '')}"
    fs = tm["fire_annual_slope"].values.astype(float)
    fp = tm["fire_annual_p"].values.astype(float)
    cap = (
        f"Per-cell Theil–Sen trend of annual fire emissions (a) and of annual NEE + fire (b), {yrs} "
        "(g C m-2 yr-2; dots where the Mann–Kendall p < 0.05). A cell with fire in fewer than three years has "
        f"no fire trend; {int(np.isfinite(fs).sum())} cells have one, {int((np.nan_to_num(fs) != 0).sum())} of "
        f"them a non-zero slope (the Sen slope, a median of pairwise slopes, is 0 where most years have no "
        f"fire) and {int((np.nan_to_num(fp, nan=1.0) < 0.05).sum())} p < 0.05. "
        "RUN/trends/trend_maps.zarr (fire_annual_*, nee_fire_annual_*)."
    )
    return [Item("fire_trend", "Fire", "Trends of fire emissions and NEE + fire", cap, fig=fig)]


def fig_uncertainty(rd: RunData) -> list[Item]:
    up = rd.upscaled()
    fl = [f for f in FLUXES if f"{f}_sd" in up]
    if not fl:
        return []
    fig, axes = plt.subplots(2, len(fl), figsize=(4.3 * len(fl), 7.4), squeeze=False)
    for j, f in enumerate(fl):
        sd = np.asarray(up[f"{f}_sd"].mean("time").values, float)
        mag = np.asarray(abs(up[f]).mean("time").values, float)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = 100 * sd / mag
        _map(
            axes[0, j],
            rd,
            sd,
            cmap="magma_r",
            vmin=0,
            vmax=float(np.nanpercentile(sd, 99)),
            title=f"{LABEL[f]}: bootstrap SD",
            label=FLUX_UNITS,
        )
        _map(
            axes[1, j],
            rd,
            rel,
            cmap="cividis",
            vmin=0,
            vmax=min(200.0, float(np.nanpercentile(rel, 98))),
            title=f"{LABEL[f]}: relative SD",
            label="% of mean |flux|",
        )
    fig.tight_layout()
    cap = (
        f"Per-cell uncertainty, {rd.period()}: top, the SD across the bootstrap forests of the monthly flux, "
        "averaged over all months (g C m-2 month-1); bottom, that SD relative to the mean absolute monthly flux "
        "(%, colour scale capped at 200 %; NEE's is large where NEE is near zero). From RUN/upscaled.zarr "
        "(*_sd); the bootstrap forests leave out month and vegetation type."
    )
    return [Item("uncertainty", "Uncertainty", "SD and relative-SD maps", cap, fig=fig)]


def shipped_calibration(name: str = "calibration_summary.csv") -> tuple[pd.DataFrame | None, str]:
    """The calibration summary shipped with abzflux (data/calibration_summary.csv; the budget
    trends' data/calibration_trends_summary.csv) and its provenance lines; (None, "") when
    absent."""
    from importlib import resources

    f = resources.files("abzflux") / "data" / name
    if not f.is_file():
        return None, ""
    text = f.read_text()
    prov = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
    return pd.read_csv(io.StringIO(text), comment="#"), prov


def _calibration_rows(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """A shipped calibration summary's rows as the report shows them (n: zone-years of annual
    budgets, zone trends of budget trends)."""
    t = pd.DataFrame({"method": rows.method, "scored": what})
    if "site_effects" in rows:
        t["site effects"] = rows.site_effects.fillna("biased")
    t["network"] = rows.network
    t["flux"] = rows.flux.map(lambda f: LABEL.get(f, f))
    t["n"] = rows.n
    t["inside ±1 SD"] = (100 * rows.coverage1).map("{:.0f}%".format)
    t["inside ±2 SD"] = (100 * rows.coverage2).map("{:.0f}%".format)
    t["median |error|/SD"] = rows.median_ratio.round(2)
    t["90th pct |error|/SD"] = rows.p90_ratio.round(2)
    return t


def uncertainty_method(rd: RunData) -> list[Item]:
    """Which method produced the ±, and how well that method covered the truth on twins."""
    u = rd.record.get("config", {}).get("uncertainty") or {}
    base = u.get("method", "rows")  # runs from before the setting existed used the row bootstrap
    label = label_of(u)
    text = (
        f"The ± of this run's maps and budgets is {METHOD_TEXT.get(base, base)}"
        + (f" (blocks of {u.get('block_km'):g} km)" if base == "blocks" and u.get("block_km") else "")
        + (
            "; the budgets' ± also adds the extrapolation term, which grows with the dissimilarity index of "
            "each cell to the training data (zone sums fully correlated; budgets_annual.csv tg_c_sd_total)"
            if u.get("extrapolation")
            else ""
        )
        + (
            "; the budgets' ± also adds the network-simulation term: the RMS error of forests refitted "
            f"({u.get('network_replicates', 20)} replicates) on site data drawn from this run's own maps at the "
            "real site-months, with site effects, noise and an unexplained spatial field fitted to the "
            "cross-validation residuals"
            + (
                ", and a field that grows with the distance to the nearest site (the distance part)"
                if u.get("network_distance")
                else ""
            )
            + " (budgets_annual.csv tg_c_sd_network; total tg_c_sd_total, terms added in quadrature)"
            if u.get("network")
            else ""
        )
        + f". Method label: {label} (docs/uncertainty.md)."
    )
    if rd.has(L.EXTRAPOLATION_JSON):
        m = json.loads(rd.layout.extrapolation_json.read_text())
        multicv = any(v.get("cv") == "multicv" for v in m.values())
        text += (
            " Extrapolation model, |site-mean residual| = a + b·DI (g C m-2 month-1"
            + ("; leave-one-site-out and leave-cluster-out residuals" if multicv else "; LOSO residuals")
            + "): "
            + "; ".join(
                f"{LABEL.get(f, f)} a = {v['a']:.2f}, b = {v['b']:.2f}, from DI {v['di_ref']:.3f}" for f, v in m.items()
            )
            + "."
        )
    cal, prov = shipped_calibration()
    rows = None if cal is None else cal[cal.method == label]
    if rows is None or not len(rows):
        text += " No calibration of this method on twins ships with this abzflux version."
        t = pd.DataFrame([{"method": label}])
    else:
        text += (
            " On twins, this method's ± covered the true annual zone budgets in the shares of zone-years "
            "below (a calibrated normal ± covers 68.3 % at ±1 SD and 95.4 % at ±2 SD). " + prov
        )
        parts = [_calibration_rows(rows, "annual budget")]
        tcal, tprov = shipped_calibration("calibration_trends_summary.csv")
        trows = None if tcal is None else tcal[tcal.method == label]
        if trows is not None and len(trows):
            text += (
                " The budget trends' ± (Theil–Sen slope of each zone's annual budget; ± = SD of the bootstrap "
                "members' slopes, with the network term where the method has one) against the true trends: "
                "rows 'budget trend'. " + tprov
            )
            parts.append(_calibration_rows(trows, "budget trend"))
        text += (
            " Site effects 'centred': twins whose site observations are unbiased; 'biased': twins whose "
            "network is biased on purpose, whose error no data-only method can see (docs/uncertainty.md)."
            if "site effects" in parts[0]
            else ""
        )
        t = pd.concat(parts, ignore_index=True)
    return [
        Item(
            "uncertainty_method",
            "Uncertainty",
            "Uncertainty method and its calibration on twins",
            text,
            table_html=_table(t),
        )
    ] + network_term(rd)


def network_term(rd: RunData) -> list[Item]:
    """The network-simulation term of the period-mean budgets beside the bootstrap SD, and the
    residual model it was drawn from (RUN/network/)."""
    if not (rd.has(L.NETWORK_PERIOD) and rd.has(L.NETWORK_JSON) and rd.has(L.BUDGETS_PERIOD_SD)):
        return []
    rec = json.loads(rd.layout.network_json.read_text())
    per = rd.csv(L.NETWORK_PERIOD)
    sd = rd.csv(L.BUDGETS_PERIOD_SD)
    zones = ("domain", *BIOMES, *REGIONS)
    t = per[per.zone.isin(zones) & per.flux.isin(["gpp", "reco", "nee"])].merge(sd, on=["zone", "flux"], how="left")
    t["_z"] = t.zone.map({z: i for i, z in enumerate(zones)})
    t = t.sort_values(["flux", "_z"])
    table = pd.DataFrame(
        {
            "flux": t.flux.map(lambda f: LABEL.get(f, f)),
            "zone": t.zone,
            "bootstrap SD": t.period_mean_tg_c_sd.round(1),
            "network: mean error": t.mean_error.round(1),
            "network: SD": t.sd_error.round(1),
            "network term (RMS)": t.rms_error.round(1),
            "total ±": t.get("period_mean_tg_c_sd_total", pd.Series(np.nan, index=t.index)).round(1),
        }
    )
    m = rec["models"]
    model_text = "; ".join(
        f"{LABEL.get(f, f)}: field SD {v['field_sd']:.1f}"
        + (f" (range {v['field_range_m'] / 1e3:.0f} km)" if v["field_sd"] > 0 else "")
        + f", site SD EC {v['methods']['EC']['sd_site']:.1f} / chamber {v['methods']['chamber']['sd_site']:.1f}, "
        f"noise SD EC {v['methods']['EC']['sd_noise']:.1f} / chamber {v['methods']['chamber']['sd_noise']:.1f}"
        for f, v in m.items()
    )
    cap = (
        f"Network-simulation term of the period-mean budgets ({rd.period()}, Tg C yr-1): {rec['replicates']} "
        f"replicates, {rec['trees']} trees, mtry fixed at the run's; error = estimate − surrogate truth per "
        "replicate; the term is the RMS of the errors (mean error and SD beside it); total ± = √(bootstrap SD² "
        "+ extrapolation term² + network term²). Residual model from the leave-one-site-out residuals, in g C m-2 "
        f"month-1 times the seasonal scale s(month) (1: a month of average residual size): {model_text} "
        "(RUN/network/)."
    )
    return [Item("uncertainty_network", "Uncertainty", "Network-simulation term", cap, table_html=_table(table))]


def fig_extrapolation(rd: RunData) -> list[Item]:
    p = rd.layout.extrapolation_maps
    if not p.exists():
        return []
    ex = xr.open_zarr(p, consolidated=False)
    ex_x, ex_y = ex.x.values.astype(float), ex.y.values.astype(float)
    items = []
    periods = [str(v) for v in ex["period"].values] if "mess" in ex else []
    if periods:
        ncol = min(3, len(periods))
        nrow = int(np.ceil(len(periods) / ncol))
        fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.9 * nrow), squeeze=False)
        colors = ["#67001f", "#d6604d", "#fddbc7", "#d1e5f0", "#4393c3"]
        for ax, per in zip(axes.ravel(), periods):
            m = ex["mess"].sel(period=per).values.astype(float)
            codes = mess_classes(m)
            _classes(ax, rd, codes, MESS_LABELS, colors, f"MESS (%) {per}", x=ex_x, y=ex_y)
        for ax in axes.ravel()[len(periods) :]:
            ax.axis("off")
        fig.tight_layout()
        share = ""
        if rd.has(L.MESS_AREA):
            ma = rd.csv(L.MESS_AREA)
            dom = ma[ma.zone == "domain"]
            if len(dom):
                share = (
                    " Domain area share with MESS < 0: "
                    + ", ".join(f"{r.period} {100 * r.share_extrapolated:.0f} %" for r in dom.itertuples())
                    + "."
                )
        cap = (
            "Multivariate environmental similarity surface (MESS, %) of each period's mean continuous predictors "
            "against the training rows of that period; negative = the predictors lie outside the training range "
            "(extrapolation), in classes ≤ −80, −80 to −20, −20 to < 0, 0 to 5, > 5 (RUN/compare/extrapolation.zarr)."
            + share
        )
        items.append(Item("mess", "Extrapolation", "Extrapolation: MESS by period", cap, fig=fig))
    panels = [v for v in ("mess_mod", "di", "cluster") if v in ex]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
        for ax, v in zip(axes[0], panels):
            if v == "mess_mod":
                per = periods[-1]
                names = ex["mess_mod"].attrs.get("flag_meanings", "")
                names = names.split() if isinstance(names, str) else list(names)
                mod = ex["mess_mod"].sel(period=per).values.astype(float)
                mod[mod < 0] = np.nan
                n = max(len(names), int(np.nanmax(mod)) + 1 if np.isfinite(mod).any() else 1)
                labels = names + [str(i) for i in range(len(names), n)]
                _classes(
                    ax,
                    rd,
                    np.where(ex["mess"].sel(period=per).values < 0, mod, np.nan),
                    labels,
                    _tab(n),
                    f"most dissimilar predictor, {per}",
                    x=ex_x,
                    y=ex_y,
                    fontsize=6,
                )
            elif v == "di":
                di = ex["di"].values.astype(float)
                _map(
                    ax,
                    rd,
                    di,
                    cmap="YlOrRd",
                    vmin=0,
                    vmax=float(np.nanpercentile(di, 99)),
                    x=ex_x,
                    y=ex_y,
                    title="dissimilarity index (AOA outline)",
                    label="DI",
                )
                if "aoa" in ex:
                    a = np.nan_to_num(ex["aoa"].values.astype(float))
                    if a.max() > 0.5 > a.min():
                        ax.contour(ex_x / 1e3, ex_y / 1e3, a, levels=[0.5], colors="b", linewidths=0.8)
            else:
                cl = ex["cluster"].values.astype(float)
                cl[cl < 0] = np.nan
                n = int(np.nanmax(cl)) + 1 if np.isfinite(cl).any() else 1
                _classes(
                    ax, rd, cl, [f"cluster {i}" for i in range(n)], _tab(n), "environmental clusters", x=ex_x, y=ex_y
                )
        fig.tight_layout()
        thr = ex["aoa"].attrs.get("threshold") if "aoa" in ex else None
        cap = (
            "Where the model extrapolates: the predictor farthest outside its training range where MESS < 0 "
            "(last period); the area-of-applicability dissimilarity index (DI) with the AOA boundary in blue"
            + (f" (threshold {float(thr):.3g})" if thr is not None else "")
            + "; k-means clusters of the standardised predictors (RUN/compare/extrapolation.zarr)."
        )
        items.append(
            Item("extrapolation", "Extrapolation", "Extrapolation: dissimilar predictor, AOA, clusters", cap, fig=fig)
        )
    for rel, title, cap in (
        (
            L.AOA_SD,
            "Bootstrap SD inside vs outside the AOA",
            "Mean annual bootstrap SD (g C m-2 yr-1) inside and outside the area of applicability and their ratio.",
        ),
        (
            L.CLUSTERS,
            "Environmental clusters",
            (
                "Area share, cells, sites and site-months of each environmental cluster, with the cluster centres "
                "of the standardised predictors."
            ),
        ),
        (L.MESS_AREA, "Area share extrapolated (MESS < 0)", "Share of each zone's area with MESS < 0, per period."),
    ):
        if rd.has(rel):
            items.append(
                Item(
                    L.inner(rel).replace(".csv", "_table"),
                    "Extrapolation",
                    title,
                    cap + f" (RUN/{rel})",
                    table_html=_table(rd.csv(rel)),
                )
            )
    return items


def tables(rd: RunData) -> list[Item]:
    items = []
    if rd.has(L.TABLE1):
        t = rd.csv(L.TABLE1)

        def pm(a, b):
            return "" if pd.isna(a) else (f"{a:.0f}" + ("" if pd.isna(b) else f" ± {b:.0f}"))

        g = lambda r, c: r.get(c, np.nan)  # noqa: E731
        rows = [
            {
                "group": r["group"],
                "flux": LABEL.get(r["flux"], r["flux"]),
                "season": r["season"],
                "in situ (g C m-2 yr-1)": pm(g(r, "insitu_mean"), g(r, "insitu_sd")),
                "sites": "" if pd.isna(g(r, "insitu_sites")) else int(r["insitu_sites"]),
                "upscaled (g C m-2 yr-1)": pm(g(r, "density"), g(r, "density_sd_years")),
                "budget (Tg C yr-1)": pm(g(r, "budget"), g(r, "budget_sd")),
            }
            for _, r in t.iterrows()
        ]
        items.append(
            Item(
                "table1",
                "Tables",
                f"Table 1: average Arctic–boreal CO2 fluxes, {rd.period()}",
                "In situ: site-years with 12 months, averaged per site, mean ± SD across sites. Upscaled: "
                "area-weighted density, mean ± SD across years; budget ± SD across the bootstrap forests. "
                "nonsummer = January–May + September–December of the same year (RUN/budgets/table1.csv).",
                table_html=_table(pd.DataFrame(rows)),
            )
        )
    if rd.has(L.SUMMARY_JSON):
        s = json.loads(rd.layout.summary_json.read_text())
        if "truth" in s:
            t = pd.DataFrame(s["truth"])
            t = order(t)
            cols = [
                c
                for c in ("flux", "zone", "estimate", "sd", "truth", "error", "rel_error", "trend", "trend_truth")
                if c in t
            ]
            items.append(
                Item(
                    "truth_table",
                    "Tables",
                    f"Budgets vs the twin's truth, {rd.period()}",
                    "Period-mean budgets (Tg C yr-1) ± bootstrap SD next to the truth, and Theil–Sen budget "
                    f"trends (Tg C yr-2); mean annual NEE map vs truth: Pearson r = "
                    f"{s.get('nee_map_pearson_r', float('nan')):.3f} (RUN/summary.json).",
                    table_html=_table(t[cols]),
                )
            )
    if rd.has(L.COMPARE_METRICS):
        items.append(
            Item(
                "comparison_table",
                "Tables",
                "Comparison with reference products",
                _comparison_caption(rd.csv(L.COMPARE_METRICS)),
                table_html=_table(rd.csv(L.COMPARE_METRICS)),
            )
        )
    if rd.has(L.COMPARE_BUDGETS):
        items.append(
            Item(
                "comparison_budgets",
                "Tables",
                "Budgets of the reference products",
                "Mean annual NEE budget (Tg C yr-1) of abzflux and of each product over the product's "
                "years, and their ratio, per zone (RUN/compare/budgets.csv).",
                table_html=_table(rd.csv(L.COMPARE_BUDGETS)),
            )
        )
    return items


def coverage_items(rd: RunData) -> list[Item]:
    """The coverage of the budgets (RUN/budgets/coverage.csv): the zone-years whose predicted land
    is short of the zones' land by more than ``budgets.coverage_warn``, or a "full coverage" line."""
    if not rd.has(L.COVERAGE):
        return []
    cov = pd.read_csv(rd.layout.coverage, dtype={"zone": str, "variables": str}, keep_default_na=False)
    warn = float(rd.record.get("config", {}).get("budgets", {}).get("coverage_warn", 0.001))
    bad = cov[cov.share_lost > warn].sort_values("share_lost", ascending=False, kind="stable")
    if not len(bad):
        top = float(cov.share_lost.max()) if len(cov) else 0.0
        return [
            Item(
                "coverage",
                "Tables",
                "Coverage of the budgets",
                f"Full coverage: the upscaling predicted every zone's land in every month of {rd.period()}"
                + (f" (largest loss {top:.3%}, below budgets.coverage_warn = {warn:g})" if top > 0 else "")
                + " (RUN/budgets/coverage.csv).",
                table_html="",
            )
        ]
    t = pd.DataFrame(
        {
            "zone": bad.zone,
            "year": bad.year,
            "land (km²)": bad.land_km2.round(0),
            "predicted (km²)": bad.predicted_km2.round(0),
            "lost": (100 * bad.share_lost).map("{:.2f}%".format),
            "worst month": bad.worst_month,
            "missing": bad.variables,
        }
    )
    return [
        Item(
            "coverage",
            "Tables",
            "Coverage of the budgets",
            f"{len(bad)} zone-year(s) lose more than {warn:g} of their land (budgets.coverage_warn): where a "
            "predictor is missing the upscaled flux is NaN, and these budgets sum only the predicted area "
            "(worst month of the year; RUN/budgets/coverage.csv).",
            table_html=_table(t.head(50)),
        )
    ]


def insitu_tables(rd: RunData) -> list[Item]:
    """In-situ statistics (abzflux.insitu) when the run's site table came from ABCflux (its
    `abcflux_row` provenance column, written by `abzflux sites import abcflux`)."""
    if not rd.has(L.SITES):
        return []
    sites = rd.sites()
    if "abcflux_row" not in sites.columns:
        return []
    from .insitu import PAPER, summary

    s = summary(sites)
    b = s["biome_annual"].copy()
    b["paper (in situ)"] = [
        f"{PAPER[k][0]:.0f} ± {PAPER[k][1]:.0f}" if k in PAPER else "" for k in (b.biome + " " + b.flux)
    ]
    sh, la, tr = s["source_share"], s["latitude"], s["trends"]
    nee = tr[tr.flux == "nee"]
    other = pd.DataFrame(
        [
            {
                "statistic": "sites with annual NEE > 0",
                "value": f"{sh['source_sites']} of {sh['sites']} ({100 * sh['share']:.0f} %)",
                "paper": "29 %",
            },
            {
                "statistic": "Pearson r, site NEE vs latitude",
                "value": f"{la['pearson_r']:.2f} (p = {la['p']:.3g}, n = {la['n']})",
                "paper": "0.26 (P = 0.053)",
            },
            {
                "statistic": "sites with ≥ 8 complete NEE years",
                "value": f"{len(nee)}, {int((nee.p < 0.05).sum())} with p < 0.05",
                "paper": "9, 1 significant",
            },
        ]
    )
    cap = (
        "The run's site table is ABCflux (abzflux sites import abcflux). Annual flux: each site's mean over "
        "its site-years with 12 months, then mean ± SD across sites (g C m-2 yr-1); docs/real_data.md "
        "explains the differences from the paper's values."
    )
    return [
        Item("insitu_biomes", "In situ (ABCflux)", "In-situ annual fluxes by biome", cap, table_html=_table(b)),
        Item(
            "insitu_other", "In situ (ABCflux)", "Source sites, latitude and site trends", cap, table_html=_table(other)
        ),
    ]


# --------------------------------------------------------------------------- Extended Data and Supplementary
def _no_data(ax, msg: str):
    """Say in the panel why it has nothing to show (instead of leaving it blank)."""
    return ax.text(0.5, 0.5, msg, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="0.3", wrap=True)


def _prewhitening(rd: RunData) -> str:
    t = rd.record.get("config", {}).get("trends") or {}
    return {"zhang": "Zhang", "yuepilon": "Yue–Pilon"}.get(t.get("prewhitening", "zhang"), str(t.get("prewhitening")))


def ed5_monthly_trends(rd: RunData) -> list[Item]:
    """Extended Data Fig. 5: the Theil–Sen trend of NEE per calendar month (trends/trend_maps.zarr)."""
    tm = rd.trend_maps()
    months = [m for m in range(1, 13) if f"nee_m{m:02d}_slope" in tm]
    if not months:
        return []
    x, y = rd.grid()
    slopes = {m: np.asarray(tm[f"nee_m{m:02d}_slope"].values, float) for m in months}
    vt = _sym(*slopes.values())
    norm = TwoSlopeNorm(0, -vt, vt)
    fig, axes = plt.subplots(3, 4, figsize=(15, 10.5))
    for m, ax in zip(range(1, 13), axes.ravel()):
        name = pd.Timestamp(2001, m, 1).strftime("%B")
        if m not in slopes:
            _map(ax, rd, None, title=name)
            _no_data(ax, f"no {name} trend map in this run")
            continue
        _map(ax, rd, slopes[m], cmap="RdBu_r", norm=norm, title=name, label="g C m-2 month-1 yr-1")
        p = np.asarray(tm[f"nee_m{m:02d}_p"].values, float)
        sy, sx = np.nonzero(np.nan_to_num(p, nan=1.0) < 0.05)
        ax.scatter(x[sx] / 1e3, y[sy] / 1e3, s=0.6, c="k", marker=".", lw=0)
    fig.tight_layout()
    cap = (
        f"Theil–Sen trend of monthly NEE for each calendar month (g C m-2 month-1 yr-1), {rd.period()}, one map "
        f"per month; dots mark cells with a Mann–Kendall p < 0.05 ({_prewhitening(rd)} prewhitening). Positive = "
        "increasing net emission (e.g. the shoulder seasons), negative = increasing net uptake; one colour scale "
        "for all months (RUN/trends/trend_maps.zarr, nee_mMM_slope and nee_mMM_p)."
    )
    return [Item("ed5", "Extended Data", "Extended Data Fig. 5: monthly NEE trend maps", cap, fig=fig)]


SKILL_BARS = (
    ("pooled_R2", "R² (pooled)", ""),
    ("pooled_RMSE", "RMSE", FLUX_UNITS),
    ("pooled_bias", "bias", FLUX_UNITS),
)


def ed6_skill_by_disturbance(rd: RunData) -> list[Item]:
    """Extended Data Fig. 6: leave-one-site-out skill by disturbance class (cv/skill_by_disturbance.csv)."""
    rel = f"{L.CV}/skill_by_disturbance.csv"
    if not rd.has(rel):
        return []
    s = rd.csv(rel, keep_default_na=False, na_values=[""])
    classes = list(dict.fromkeys(s.disturbance.astype(str)))
    fluxes = [f for f in FLUXES if f in set(s.flux)]
    fig, axes = plt.subplots(1, len(SKILL_BARS), figsize=(14, 4.2))
    w = 0.8 / max(len(fluxes), 1)
    for ax, (col, name, unit) in zip(axes, SKILL_BARS):
        for k, f in enumerate(fluxes):
            d = s[s.flux == f].set_index(s[s.flux == f].disturbance.astype(str)).reindex(classes)
            ax.bar(
                np.arange(len(classes)) + (k - (len(fluxes) - 1) / 2) * w,
                d[col].to_numpy(float),
                width=w,
                label=LABEL[f],
                color=("tab:green", "tab:brown", "tab:blue")[FLUXES.index(f) % 3],
            )
        ax.set_xticks(range(len(classes)))
        n = s[s.flux == fluxes[-1]].set_index("disturbance").pooled_n.reindex(classes) if fluxes else None
        ax.set_xticklabels(
            [
                f"{c}\n({int(v)} {LABEL[fluxes[-1]]} months)" if n is not None and pd.notna(v) else c
                for c, v in zip(classes, n)
            ],
            fontsize=7,
        )
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(unit or name, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    cap = (
        "Leave-one-site-out skill at the chosen mtry by the sites' disturbance class (site-months pooled): R², "
        "RMSE and bias (mean predicted − observed; negative = the model predicts too much uptake), g C m-2 "
        "month-1, per flux; x labels give the NEE site-months per class. Site-months "
        f"{_cv_years(rd)} (RUN/cv/skill_by_disturbance.csv, also with caret site-mean statistics)."
    )
    return [Item("ed6", "Extended Data", "Extended Data Fig. 6: model skill by disturbance", cap, fig=fig)]


def _cv_years(rd: RunData) -> str:
    p = _chosen_cv(rd)
    return f"{int(p.year.min())}–{int(p.year.max())}" if len(p) else rd.period()


def _chosen_cv(rd: RunData) -> pd.DataFrame:
    """The leave-one-site-out predictions at each flux's chosen mtry (empty without CV)."""
    if "cvchosen" not in rd._cache:
        if not rd.has(L.CV_PREDICTIONS):
            rd._cache["cvchosen"] = pd.DataFrame(columns=["flux", "site_id", "year", "month", "obs", "pred"])
        else:
            info = json.loads(rd.layout.forest_json.read_text())
            pred = pd.read_parquet(rd.layout.cv_predictions)
            mt = pd.DataFrame([{"flux": f, "mtry": v["mtry"]} for f, v in info.items()])
            rd._cache["cvchosen"] = pred.merge(mt, on=["flux", "mtry"])
    return rd._cache["cvchosen"]


def _t(d: pd.DataFrame) -> np.ndarray:
    """Decimal time of the middle of each row's month."""
    return d.year.to_numpy(float) + (d.month.to_numpy(float) - 0.5) / 12


def gapped(d: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    """(decimal time, values) of monthly rows sorted in time, with a NaN inserted wherever a
    month is missing, so that a line is broken at the gap instead of bridging it."""
    d = d.sort_values(["year", "month"])
    t, v = _t(d), d[col].to_numpy(float)
    k = d.year.to_numpy() * 12 + d.month.to_numpy()
    cut = np.nonzero(np.diff(k) > 1)[0] + 1
    return np.insert(t, cut, np.nan), np.insert(v, cut, np.nan)


SERIES_SITES = 6


def series_sites(rd: RunData, flux: str = "nee", disturbance: str | None = None, n: int = SERIES_SITES) -> list:
    """The ``n`` sites with the most site-months of ``flux`` (ties by site id), optionally only
    sites with a ``disturbance`` class in any of their rows."""
    s = rd.sites()
    s = s[s[flux].notna()] if flux in s else s.iloc[:0]
    if disturbance is not None:
        keep = set(s.loc[s.disturbance.astype(str) == disturbance, "site_id"])
        s = s[s.site_id.isin(keep)]
    c = s.groupby("site_id").size().reset_index(name="n").sort_values(["n", "site_id"], ascending=[False, True])
    return list(c.site_id[:n])


def _site_series_item(rd: RunData, ident: str, title: str, sites: list, what: str, flux: str = "nee") -> Item:
    s = rd.sites()
    cv = _chosen_cv(rd)
    cv = cv[cv.flux == flux]
    fitted = pd.read_parquet(rd.layout / L.FOREST_FITTED) if rd.has(L.FOREST_FITTED) else None
    if fitted is not None:
        fitted = fitted[fitted.flux == flux]
    ncol = 2
    nrow = max(1, int(np.ceil(len(sites) / ncol)))
    fig, axes = plt.subplots(nrow, ncol, figsize=(13, 2.9 * nrow), squeeze=False)
    for ax, sid in zip(axes.ravel(), sites):
        o = s[(s.site_id == sid) & s[flux].notna()].sort_values(["year", "month"])
        ax.plot(_t(o), o[flux], "o", color="k", ms=2.5, label="observed")
        if fitted is not None:
            ax.plot(
                *gapped(fitted[fitted.site_id == sid], "fitted"),
                "-",
                color="tab:blue",
                lw=1.0,
                label="fitted (final forest)",
            )
        ax.plot(
            *gapped(cv[cv.site_id == sid], "pred"),
            "-",
            color="tab:orange",
            lw=1.0,
            label="cross-validated (site left out)",
        )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        dist = ", ".join(sorted(set(o.disturbance.astype(str)) - {"none", "nan", ""})) if "disturbance" in o else ""
        ax.set_title(
            f"{sid} ({o.biome.iloc[0] if 'biome' in o and len(o) else ''}; {len(o)} months"
            + (f"; {dist}" if dist else "")
            + ")",
            fontsize=8,
        )
        ax.axhline(0, color="k", lw=0.4)
        ax.set_ylabel(FLUX_UNITS, fontsize=7)
        ax.tick_params(labelsize=7)
    if not sites:
        _no_data(axes[0, 0], f"no site with {what}")
    for ax in axes.ravel()[max(len(sites), 1) :]:
        ax.axis("off")
    if sites:
        axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    cap = (
        f"Monthly {LABEL[flux]} (g C m-2 month-1) at {what}"
        + (f" ({', '.join(map(str, sites))})" if sites else " (none in this run)")
        + ": observed (black), the final forest's in-sample prediction of the training rows (blue, "
        + (
            "RUN/models/fitted.parquet)"
            if fitted is not None
            else "not in this run: RUN/models/fitted.parquet is written by the forest stage of newer abzflux)"
        )
        + " and the leave-one-site-out prediction from a forest trained without the site (orange, chosen mtry, "
        f"RUN/cv/predictions.parquet); lines are broken where months are missing; {_cv_years(rd)}." + _site_oob_note(rd)
    )
    return Item(ident, "Supplementary", title, cap, fig=fig)


def supp_site_series(rd: RunData) -> list[Item]:
    """Supplementary Figs. 3 and 4: site time series, observed vs fitted vs cross-validated."""
    if not rd.has(L.CV_PREDICTIONS) or "nee" not in rd.sites():
        return []
    return [
        _site_series_item(
            rd,
            "supp3",
            "Supplementary Fig. 3: site time series, longest records",
            series_sites(rd),
            f"the {SERIES_SITES} sites with the most NEE site-months",
        ),
        _site_series_item(
            rd,
            "supp4",
            "Supplementary Fig. 4: site time series, burned sites",
            series_sites(rd, disturbance="fire"),
            f"the {SERIES_SITES} sites with a fire disturbance and the most NEE site-months",
        ),
    ]


GREENING_NAMES = ("greening, annual uptake ↑", "greening, JJA uptake ↑ only", "greening, no uptake ↑", "no greening")


def greening_classes(tm: xr.Dataset, alpha: float = 0.05) -> np.ndarray:
    """Per cell: 0 = significant JJA NDVI greening with a significant annual NEE uptake trend,
    1 = greening with only a significant JJA uptake trend, 2 = greening without either,
    3 = no significant greening; NaN where the NEE trend is undefined."""
    ns, npv = np.asarray(tm.ndvi_jja_slope.values, float), np.asarray(tm.ndvi_jja_p.values, float)
    green = (npv < alpha) & (ns > 0)
    ann = (np.asarray(tm.nee_annual_p.values, float) < alpha) & (np.asarray(tm.nee_annual_slope.values, float) < 0)
    jja = (np.asarray(tm.nee_jja_p.values, float) < alpha) & (np.asarray(tm.nee_jja_slope.values, float) < 0)
    c = np.select([green & ann, green & jja, green], [0, 1, 2], 3).astype(float)
    return np.where(np.isfinite(np.asarray(tm.nee_annual_slope.values, float)), c, np.nan)


def supp5_greening(rd: RunData) -> list[Item]:
    """Supplementary Fig. 5: greening (JJA NDVI trend) vs NEE uptake trends."""
    tm = rd.trend_maps()
    need = ("ndvi_jja_slope", "ndvi_jja_p", "nee_jja_slope", "nee_jja_p")
    if not all(v in tm for v in need):
        return []
    from .trends import ALPHA

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    _map(
        axes[0],
        rd,
        np.asarray(tm.ndvi_jja_slope.values, float),
        cmap="BrBG",
        norm=TwoSlopeNorm(0, -_sym(tm.ndvi_jja_slope.values), _sym(tm.ndvi_jja_slope.values)),
        title="a  JJA NDVI trend",
        label="NDVI yr-1",
    )
    _classes(
        axes[1],
        rd,
        greening_classes(tm, ALPHA),
        GREENING_NAMES,
        ["#1a9850", "#91cf60", "#fc8d59", "#e0e0e0"],
        "b  greening vs uptake trends",
    )
    fig.tight_layout()
    share = ""
    rel = f"{L.TRENDS}/area_shares.csv"
    if rd.has(rel):
        a = rd.csv(rel).set_index("quantity").area_share
        if "greening" in a:
            share = (
                f" Area shares: greening {100 * a['greening']:.0f} % of the land with a trend; of the greening land, "
                f"{100 * a.get('greening_with_annual_uptake_trend', np.nan):.0f} % with an increasing annual net "
                f"uptake and {100 * a.get('greening_with_jja_uptake_trend', np.nan):.0f} % with an increasing "
                "June–August net uptake (RUN/trends/area_shares.csv)."
            )
    cap = (
        f"Greening against net-uptake trends, {rd.period()}: a, the Theil–Sen trend of the June–August mean NDVI "
        f"(NDVI yr-1); b, cells with a significant greening (JJA NDVI trend > 0, Mann–Kendall p < {ALPHA:g}) split "
        "by whether their annual or only their June–August NEE shows a significant increasing uptake (trend < 0, "
        f"p < {ALPHA:g}), and cells without significant greening ({_prewhitening(rd)} prewhitening; "
        "RUN/trends/trend_maps.zarr)." + share
    )
    return [Item("supp5", "Supplementary", "Supplementary Fig. 5: greening vs uptake trends", cap, fig=fig)]


def _burned_rows(rd: RunData) -> pd.DataFrame:
    s = rd.sites()
    if "years_since_fire" not in s or "disturbance" not in s:
        return s.iloc[:0]
    return s[(s.disturbance.astype(str) == "fire") & s.years_since_fire.notna()]


def supp13_postfire_sites(rd: RunData) -> list[Item]:
    """Supplementary Fig. 13: July NDVI, GPP and NEE at burned sites against years since fire."""
    b = _burned_rows(rd)
    b = b[b.month == 7]
    vars_ = [v for v in ("ndvi", "gpp", "nee") if v in rd.sites()]
    fig, axes = plt.subplots(1, len(vars_), figsize=(4.3 * len(vars_), 3.8), squeeze=False)
    sites = sorted(set(b.site_id))
    colors = dict(zip(sites, _tab(max(len(sites), 1)) * (len(sites) // 20 + 1)))
    for ax, v in zip(axes[0], vars_):
        d = b[b[v].notna()]
        for sid, g in d.groupby("site_id"):
            g = g.sort_values("years_since_fire")
            ax.plot(g.years_since_fire, g[v], "o-", ms=3, lw=0.7, color=colors[sid])
        if d.empty:
            _no_data(ax, f"no July {LABEL.get(v, v.upper())} at a burned site")
        ax.set_xlabel("years since fire", fontsize=8)
        ax.set_ylabel(
            "NDVI" if v == "ndvi" else f"{LABEL[v]} ({FLUX_UNITS})",
            fontsize=8,
        )
        ax.set_title(f"July {LABEL.get(v, 'NDVI')}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    cap = (
        f"Post-fire recovery at the burned sites: July NDVI (the site's predictor value), GPP and NEE "
        f"(g C m-2 month-1) of each site-year against the site's years since fire; one colour and line per site "
        f"({len(sites)} sites with a fire disturbance and years since fire, RUN/sites.parquet)."
    )
    return [Item("supp13", "Supplementary", "Supplementary Fig. 13: post-fire recovery at burned sites", cap, fig=fig)]


def _nee_residuals(rd: RunData) -> pd.DataFrame | None:
    """The NEE model's LOSO residuals (observed − predicted) with years since fire (as the fire
    stage); computed once per report (Supp. Figs 14 and 16 both draw them)."""
    if "nee_residuals" not in rd._cache:
        r = None
        if rd.has(L.CV_PREDICTIONS):
            info = json.loads(rd.layout.forest_json.read_text())
            if "nee" in info:
                from .fire import site_residuals

                r = site_residuals(pd.read_parquet(rd.layout.cv_predictions), rd.sites(), info["nee"]["mtry"])
        rd._cache["nee_residuals"] = r
    return rd._cache["nee_residuals"]


def supp14_residuals(rd: RunData) -> list[Item]:
    """Supplementary Fig. 14: the distribution of NEE LOSO residuals at burned and other site-months."""
    r = _nee_residuals(rd)
    if r is None:
        return []
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    lo, hi = np.nanpercentile(r.residual, [0.5, 99.5])
    bins = np.linspace(lo, hi, 41)
    for burned, name, c in ((False, "other site-months", "0.5"), (True, "burned site-months", "tab:red")):
        d = r.residual[r.burned == burned].dropna()
        if len(d):
            ax.hist(d, bins=bins, density=True, alpha=0.55, color=c, label=f"{name} (n {len(d)}, mean {d.mean():.1f})")
            ax.axvline(d.mean(), color=c, lw=1.2)
    if not r.burned.any():
        ax.text(0.02, 0.95, "no burned site-month", transform=ax.transAxes, fontsize=8, va="top", color="0.3")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel(f"NEE residual, observed − LOSO predicted ({FLUX_UNITS})", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    cap = (
        "Distribution of the NEE model's leave-one-site-out residuals (observed − predicted, g C m-2 month-1, "
        "chosen mtry) at burned site-months (a fire disturbance with years since fire) and at all others; "
        "positive = the model predicts too much uptake; vertical lines = means (1st–99th.5 percentile range "
        f"shown), site-months {_cv_years(rd)} (RUN/cv/predictions.parquet with RUN/sites.parquet, as the fire "
        "stage's RUN/fire/residual_diagnostics.csv)." + _site_oob_note(rd)
    )
    return [Item("supp14", "Supplementary", "Supplementary Fig. 14: NEE residuals, burned vs other", cap, fig=fig)]


def supp15_postfire_upscaled(rd: RunData) -> list[Item]:
    """Supplementary Fig. 15: upscaled July GPP and NEE at burned cells around the last fire."""
    if not rd.has(L.BURNED_CELLS):
        return []
    up = rd.upscaled()
    with xr.open_dataset(rd.layout.burned_cells) as b:
        last = b["last_burn_year"].values.astype(float)
    fluxes = [f for f in ("gpp", "nee") if f in up]
    fig, axes = plt.subplots(1, len(fluxes), figsize=(5.2 * len(fluxes), 3.9), squeeze=False)
    same = last.shape == up["nee"].shape[1:]
    ncell = 0
    for ax, f in zip(axes[0], fluxes):
        ax.set_title(f"July {LABEL[f]}, anomaly from the cell's mean", fontsize=9)
        ax.set_xlabel("years since the last fire", fontsize=8)
        ax.set_ylabel(FLUX_UNITS, fontsize=8)
        ax.tick_params(labelsize=7)
        if not same:
            _no_data(ax, "the burned-cell map is not on the upscaling grid")
            continue
        rel, anom = postfire_composite(up[f], last)
        ncell = int(np.isfinite(last[last > 0]).sum())
        if not len(rel):
            _no_data(ax, "no burned cell inside the upscaled period")
            continue
        ax.plot(rel, anom, "o-", color="tab:green" if f == "gpp" else "tab:blue", ms=3)
        ax.axvline(0, color="tab:red", lw=0.8)
        ax.axhline(0, color="k", lw=0.5)
    fig.tight_layout()
    cap = (
        f"The upscaled July flux (g C m-2 month-1) at the cells burned in the fire period ({ncell} cells, "
        "RUN/fire/burned_cells.nc, last burn year), composited by years relative to the cell's last fire (0 = fire "
        "year; earlier fires of the same cell are ignored): each cell's July value minus its own "
        f"{rd.period()} July mean, averaged over the cells (RUN/upscaled.zarr)."
    )
    return [Item("supp15", "Supplementary", "Supplementary Fig. 15: upscaled fluxes after fire", cap, fig=fig)]


def postfire_composite(da: xr.DataArray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(years relative to the last fire, mean anomaly): per burned cell (``last`` > 0) its July
    values minus its July mean, averaged over cells at each year − last burn year."""
    jul = da.sel(time=da["time.month"] == 7)
    years = pd.DatetimeIndex(jul.time.values).year.to_numpy()
    iy, ix = np.nonzero(np.nan_to_num(last) > 0)
    if not len(iy):
        return np.array([]), np.array([])
    v = np.asarray(jul.values, float)[:, iy, ix]  # (year, cell)
    anom = v - np.nanmean(v, axis=0, keepdims=True)
    rel = years[:, None] - last[iy, ix][None, :]
    ok = np.isfinite(anom)
    t = pd.DataFrame({"rel": rel[ok].astype(int), "a": anom[ok]}).groupby("rel").a.mean()
    return t.index.to_numpy(), t.to_numpy()


def supp16_bias_by_ysf(rd: RunData) -> list[Item]:
    """Supplementary Fig. 16: NEE LOSO residual at burned sites against years since fire, per month,
    with the fire stage's mixed-model line."""
    r = _nee_residuals(rd)
    if r is None:
        return []
    b = r[r.burned]
    models = rd.csv(f"{L.FIRE}/bias_models.csv").set_index("month") if rd.has(f"{L.FIRE}/bias_models.csv") else None
    fig, axes = plt.subplots(3, 4, figsize=(14, 8.5), sharex=True, sharey=True)
    xmax = float(b.years_since_fire.max()) if len(b) else 18.0
    window = None  # the fire stage's fitting window (fire.max_years_since_fire), when it recorded one
    if rd.layout.fire_json.exists():
        window = json.loads(rd.layout.fire_json.read_text()).get("max_years_since_fire")
    if window is not None:
        xmax = min(xmax, float(window))
    for m, ax in zip(range(1, 13), axes.ravel()):
        d = b[b.month == m]
        ax.plot(d.years_since_fire, d.residual, "o", ms=2.5, color="0.4", alpha=0.7)
        ax.axhline(0, color="k", lw=0.5)
        name = pd.Timestamp(2001, m, 1).strftime("%B")
        title = name
        if d.empty:
            _no_data(ax, f"no burned site-month in {name}")
        if models is not None and m in models.index and np.isfinite(models.loc[m, "slope"]):
            mm = models.loc[m]
            xs = np.array([0.0, xmax])
            sig = bool(mm.get("significant", False))
            ax.plot(xs, mm.intercept + mm.slope * xs, "-" if sig else "--", color="tab:red", lw=1.2)
            title += f": {mm.slope:+.2f} per year, p {mm.slope_p:.2g}"
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("years since fire", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"obs − LOSO pred ({FLUX_UNITS})", fontsize=7)
    fig.tight_layout()
    cap = (
        "The NEE model's leave-one-site-out residual (observed − predicted, g C m-2 month-1) at burned site-months "
        f"against years since fire, per calendar month ({len(b)} site-months at {b.site_id.nunique()} sites; "
        "RUN/cv/predictions.parquet with RUN/sites.parquet). Red: the fire stage's mixed model of that month "
        "(residual ~ years since fire, site random intercept and slope; RUN/fire/bias_models.csv), solid where "
        "significant, dashed otherwise, drawn over 0 to the largest years since fire of the burned site-months "
        + (f"within the fitting window of {window:g} years; " if window is not None else "; ")
        + "the title gives its slope (g C m-2 month-1 per year) and p."
        + ("" if models is not None else " This run has no fire stage: no mixed-model lines.")
        + _site_oob_note(rd)
    )
    return [Item("supp16", "Supplementary", "Supplementary Fig. 16: NEE bias by years since fire", cap, fig=fig)]


def supp17_fine_vs_coarse(rd: RunData) -> list[Item]:
    """Supplementary Fig. 17: the fine set against the coarse set over their shared years."""
    rel = f"{L.COARSE}/{L.BUDGETS_ANNUAL}"
    if not rd.has(rel):
        return []
    fine, coarse = rd.annual(), rd.csv(rel)
    zones = ["domain", "boreal", "tundra", "permafrost", *REGIONS]
    pair = fine_coarse_pairs(fine, coarse, zones)
    years = sorted(set(pair.year))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    for z, c in zip(zones, _tab(len(zones))):
        d = pair[pair.zone == z]
        if len(d):
            ax.plot(d.fine, d.coarse, "o", ms=3.5, color=c, label=z)
    if len(pair):
        lo, hi = float(pair[["fine", "coarse"]].min().min()), float(pair[["fine", "coarse"]].max().max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.legend(fontsize=6, ncol=2)
    else:
        _no_data(ax, "no year shared by the two model sets")
    ax.set_xlabel("fine set NEE (Tg C yr-1)", fontsize=8)
    ax.set_ylabel("coarse set NEE (Tg C yr-1)", fontsize=8)
    ax.set_title("a  annual NEE budgets, shared years", fontsize=9)
    ax.tick_params(labelsize=7)
    cup = rd.layout.coarse.upscaled
    span = f"{years[0]}–{years[-1]}" if years else "no shared years"
    if years and cup.exists():
        with xr.open_zarr(cup, consolidated=False) as cds:
            cm = _mean_annual_years(cds["nee"], years)
            cx, cy = cds.x.values.astype(float), cds.y.values.astype(float)
        fm = _mean_annual_years(rd.upscaled()["nee"], years)
        vm = _sym(fm, cm)
        norm = TwoSlopeNorm(0, -vm, vm)
        _map(axes[1], rd, fm, cmap="RdBu_r", norm=norm, title=f"b  fine set, {span}", label="g C m-2 yr-1")
        _map(
            axes[2], rd, cm, cmap="RdBu_r", norm=norm, x=cx, y=cy, title=f"c  coarse set, {span}", label="g C m-2 yr-1"
        )
    else:
        for ax, t in zip(axes[1:], ("b  fine set", "c  coarse set")):
            _map(ax, rd, None, title=t)
            _no_data(ax, "no coarse-set maps (RUN/coarse/upscaled.zarr)" if years else "no shared years")
    fig.tight_layout()
    r = float(np.corrcoef(pair.fine, pair.coarse)[0, 1]) if len(pair) > 2 else float("nan")
    cap = (
        f"The fine model set against the coarse one (the paper's 1-km vs 8-km models) over their shared years "
        f"{span}: a, annual NEE budgets (Tg C yr-1) of the domain, biomes, permafrost region and regions, one point "
        f"per zone-year (Pearson r {r:.2f}; RUN/budgets_annual.csv, RUN/coarse/budgets_annual.csv); b, c, mean "
        "annual NEE (g C m-2 yr-1) over the shared years of each set on its own grid (RUN/upscaled.zarr, "
        "RUN/coarse/upscaled.zarr), one colour scale."
    )
    return [Item("supp17", "Supplementary", "Supplementary Fig. 17: fine vs coarse model set", cap, fig=fig)]


def fine_coarse_pairs(fine: pd.DataFrame, coarse: pd.DataFrame, zones: list[str]) -> pd.DataFrame:
    """zone, year, fine, coarse: the annual NEE budgets of both sets in the years both have."""
    f = fine[(fine.flux == "nee") & fine.zone.isin(zones)][["zone", "year", "tg_c"]]
    c = coarse[(coarse.flux == "nee") & coarse.zone.isin(zones)][["zone", "year", "tg_c"]]
    p = f.merge(c, on=["zone", "year"], suffixes=("_f", "_c")).rename(columns={"tg_c_f": "fine", "tg_c_c": "coarse"})
    return p.dropna().sort_values(["zone", "year"]).reset_index(drop=True)


def _mean_annual_years(da: xr.DataArray, years: list[int]) -> np.ndarray:
    """Mean over ``years`` of the annual sum (complete years only), g C m-2 yr-1."""
    d = da.sel(time=da["time.year"].isin(years))
    return np.asarray(d.groupby("time.year").sum(min_count=12).mean("year").values, float)


def _table(df: pd.DataFrame) -> str:
    return df.to_html(
        index=False,
        escape=True,
        border=0,
        classes="tbl",
        na_rep="",
        float_format=lambda v: f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}",
    )


FIGURES: tuple[Callable[[RunData], list[Item]], ...] = (
    fig1_maps,
    fig2_budgets,
    fig3_monthly,
    fig4_regions,
    fig_skill,
    sensitivity_table,
    fig_interpret,
    fig_fire,
    fig_fire_trend,
    fig_uncertainty,
    uncertainty_method,
    fig_extrapolation,
    tables,
    trend_season_tables,
    coverage_items,
    insitu_tables,
    # Extended Data and Supplementary figures (docs/report.md lists every figure of the paper)
    ed5_monthly_trends,
    ed6_skill_by_disturbance,
    supp_site_series,
    supp5_greening,
    supp13_postfire_sites,
    supp14_residuals,
    supp15_postfire_upscaled,
    supp16_bias_by_ysf,
    supp17_fine_vs_coarse,
)


# --------------------------------------------------------------------------- the page
def write_report(run_dir, progress: Callable | None = None) -> Report:
    """Write ``RUN/report/`` (PNG + PDF per figure) and ``RUN/report.html``. A figure that fails is
    reported on the page and in ``Report.errors``; the others are still written."""
    t0 = time.perf_counter()
    rd = RunData(Path(run_dir))
    rep = Report(rd.run)
    tmp = rd.layout.tmp(L.REPORT)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for i, builder in enumerate(FIGURES):
        if progress is not None:
            progress(i, len(FIGURES))
        try:
            items = builder(rd)
        except Exception as e:  # noqa: BLE001 - one broken figure must not take the page down with it
            rep.errors.append((builder.__name__, f"{type(e).__name__}: {e}"))
            log.warning(f"report: {builder.__name__} failed: {type(e).__name__}: {e}")
            plt.close("all")
            continue
        for it in items:
            if it.fig is not None:  # the PNG (also embedded) and the PDF from the same figure
                it.png = _png(it.fig)
                (tmp / f"{it.id}.png").write_bytes(it.png)
                it.fig.savefig(tmp / f"{it.id}.pdf", bbox_inches="tight")
                plt.close(it.fig)
                it.fig = None
            rep.items.append(it)
        log.info(f"report: {builder.__name__}: {len(items)} item(s)")
    if progress is not None:
        progress(len(FIGURES), len(FIGURES))
    page = render_html(rd, rep)
    (tmp / "report.html.tmp").write_text(page, encoding="utf-8")
    # The old page goes first: a kill between the two renames leaves no report.html, never an old
    # page beside the new figures.
    rd.layout.report_html.unlink(missing_ok=True)
    _atomic.replace(tmp, rd.layout.report)
    os.replace(rd.layout.report / "report.html.tmp", rd.layout.report_html)
    rep.path = rd.layout.report_html
    rep.seconds = time.perf_counter() - t0
    return rep


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1250px;margin:2em auto;
color:#222;line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.4em}
table.tbl{border-collapse:collapse;font-size:.82em;margin:.6em 0}
table.tbl td,table.tbl th{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.tbl th{background:#f3f3f3}.meta{color:#555;font-size:.9em}.err{color:#b00}
.scroll{overflow-x:auto}nav ul{columns:2;font-size:.92em}
"""


def render_html(rd: RunData, rep: Report) -> str:
    rec = rd.record
    cfg = rec.get("config", {})
    esc = html.escape
    head = [
        "<h1>abzflux study report</h1>",
        (
            f"<p class='meta'>Run <code>{esc(str(rd.run.resolve()))}</code>; period {esc(rd.period())}; "
            f"abzflux {esc(str(rec.get('abzflux', '?')))}, seed {esc(str(rec.get('seed', '?')))}; run finished "
            f"{esc(str(rec.get('finished', '?')))}; report written "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>"
        ),
        "<p class='meta'>Units: fluxes in g C m-2 (per month or year as stated), budgets in Tg C yr-1, "
        "trends per year. NEE &lt; 0 = uptake by the land. "
        + ("This run has a coarse model set (RUN/coarse). " if rd.has(f"{L.COARSE}/{L.BUDGETS_ANNUAL}") else "")
        + (
            "Inputs: "
            + ", ".join(
                f"{esc(k)} = <code>{esc(Path(str(v)).name)}</code>" for k, v in cfg.get("inputs", {}).items() if v
            )
            + "."
            if cfg
            else ""
        )
        + "</p>",
    ]
    toc, body, section = [], [], None
    for it in rep.items:
        if it.section != section:
            section = it.section
            body.append(f"<h2 id='sec-{_slug(section)}'>{esc(section)}</h2>")
        toc.append(f"<li><a href='#{it.id}'>{esc(it.title)}</a></li>")
        if it.png is not None:
            b64 = base64.b64encode(it.png).decode("ascii")
            body.append(
                f"<figure id='{it.id}'><h3>{esc(it.title)}</h3>"
                f"<img alt='{esc(it.title)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption>{esc(it.caption)} Files: report/{it.id}.png, report/{it.id}.pdf.</figcaption></figure>"
            )
        else:
            body.append(
                f"<div class='table' id='{it.id}'><h3>{esc(it.title)}</h3><p class='meta'>{esc(it.caption)}</p>"
                f"<div class='scroll'>{it.table_html}</div></div>"
            )
    if rep.errors:
        body.append(
            "<h2 id='sec-errors'>Figures that failed</h2><ul class='err'>"
            + "".join(f"<li>{esc(n)}: {esc(m)}</li>" for n, m in rep.errors)
            + "</ul>"
        )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>abzflux study report</title>"
        f"<style>{CSS}</style></head><body>"
        + "".join(head)
        + "<nav><h2>Contents</h2><ul>"
        + "".join(toc)
        + "</ul></nav>"
        + "".join(body)
        + "</body></html>\n"
    )


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s.lower()).strip("-")
