"""Calibration of the reported ± on twins (docs/uncertainty.md).

Twins carry the true flux field, so the question "does the ± cover the truth?" has an answer:
generate several twins (seeds, site-network designs), run the study on each with every
uncertainty method, and count, for every zone and year, whether the true budget lies within
±1 SD and ±2 SD of the estimate. The arithmetic (:func:`inside`, :func:`error_ratio`,
:func:`coverage_summary`) is pure; :func:`run_calibration` does the runs.

Method labels: ``rows``, ``sites``, ``blocks`` (the bootstrap's resampling unit) and the same
with ``+extrap`` (the bootstrap SD combined with the extrapolation term).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import budgets as budgets_mod
from . import layout as L
from .config import load_config
from .context import Context
from .formats import open_grid
from .layout import RunLayout
from .steps import STEPS
from .summary import ZONE_ORDER
from .trends import budget_trend_sd, member_annual
from .vocab import FLUXES

log = logging.getLogger(__name__)

#: Zones the calibration scores (the summary's zones).
ZONES = tuple(ZONE_ORDER)
BOOT_METHODS = ("rows", "sites", "blocks")
#: The twin and method of every calibration row, and the scores (:func:`score`) that end it.
KEY_COLUMNS = ["twin", "network", "site_effects", "seed", "method", "zone"]
SCORE_COLUMNS = ["inside1", "inside2", "ratio"]
COLUMNS = [*KEY_COLUMNS, "year", "flux", "truth", "estimate", "sd", *SCORE_COLUMNS]


# --------------------------------------------------------------------------- arithmetic
def inside(estimate, truth, sd, k: float) -> np.ndarray:
    """True where the truth lies within estimate ± k·sd (bounds included). A zero or missing SD
    covers nothing (a missing SD is never taken as covering)."""
    e = np.abs(np.asarray(estimate, np.float64) - np.asarray(truth, np.float64))
    s = np.asarray(sd, np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(s) & (s > 0), e <= k * s, False)


def error_ratio(estimate, truth, sd) -> np.ndarray:
    """|estimate − truth| / sd; +inf where the SD is zero and the error is not, NaN without SD."""
    e = np.abs(np.asarray(estimate, np.float64) - np.asarray(truth, np.float64))
    s = np.asarray(sd, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = e / s
    r = np.where(np.isfinite(s) & (s == 0), np.where(e == 0, 0.0, np.inf), r)
    return np.where(np.isfinite(s) & (s >= 0), r, np.nan)


def score(df: pd.DataFrame) -> pd.DataFrame:
    """Adds inside1, inside2 and ratio to a table with estimate, truth and sd."""
    return df.assign(
        inside1=inside(df.estimate, df.truth, df.sd, 1.0),
        inside2=inside(df.estimate, df.truth, df.sd, 2.0),
        ratio=error_ratio(df.estimate, df.truth, df.sd),
    )


def summary_keys(cal: pd.DataFrame) -> tuple[str, ...]:
    """The summary's groups: method, site effects (where the table has them), network, flux."""
    return ("method",) + (("site_effects",) if "site_effects" in cal else ()) + ("network", "flux")


def coverage_summary(cal: pd.DataFrame, by=None) -> pd.DataFrame:
    """Per group (default :func:`summary_keys`): zone-years, coverage at ±1 and ±2 SD (shares),
    median and 90th percentile of |error| / SD, median |error| and median SD."""
    by = summary_keys(cal) if by is None else by
    cal = cal.assign(abs_error=(cal.estimate - cal.truth).abs())
    g = cal.groupby(list(by), sort=True)
    out = g.agg(
        n=("ratio", "size"),
        coverage1=("inside1", "mean"),
        coverage2=("inside2", "mean"),
        median_ratio=("ratio", "median"),
        p90_ratio=("ratio", lambda r: float(np.quantile(r, 0.9)) if len(r) else np.nan),
        median_abs_error=("abs_error", "median"),
        median_sd=("sd", "median"),
    ).reset_index()
    out["coverage1"] = out.coverage1.astype(float)
    out["coverage2"] = out.coverage2.astype(float)
    return out


# --------------------------------------------------------------------------- trends
#: Columns of calibration_trends.csv: one row per twin × method × zone × flux. truth and estimate
#: are the Theil–Sen slopes (Tg C yr-2) of the annual budgets over the twin's years (the trends
#: stage's zyp method), sd the ± of the estimate's slope, error = estimate − truth, error_pct =
#: 100 · error / |truth|.
TREND_COLUMNS = [
    *KEY_COLUMNS,
    *("flux", "first_year", "last_year", "truth", "estimate", "sd", "error", "error_pct"),
    *SCORE_COLUMNS,
]


def annual_trends(annual: pd.DataFrame, keys=("zone", "flux"), method: str = "zhang") -> pd.DataFrame:
    """Theil–Sen slope (Tg C yr-2; :func:`abzflux.trends.series_trends`, as the trends stage's
    budget trends) of each ``keys`` group's annual budget (columns ``*keys``, year, tg_c)."""
    from .trends import series_trends

    t = series_trends(annual, list(keys), method, value="tg_c")
    return t[[*keys, "first_year", "last_year", "slope"]]


def trend_sd(members_annual: pd.DataFrame, method: str = "zhang") -> pd.DataFrame:
    """The ± of a budget trend: the SD (ddof 1) across bootstrap members of their own
    Theil–Sen slopes (zone, flux, slope_sd; :func:`abzflux.trends.budget_trend_sd`)."""
    return budget_trend_sd(members_annual, method)


def score_trends(est: pd.DataFrame, truth: pd.DataFrame, sd: pd.DataFrame) -> pd.DataFrame:
    """Trend rows: the estimate's and the truth's slopes (zone, flux, slope, first_year,
    last_year) with the ± (zone, flux, slope_sd), error (Tg C yr-2 and % of |truth|) and the
    coverage columns of :func:`score`."""
    m = est.merge(truth[["zone", "flux", "slope"]].rename(columns={"slope": "truth"}), on=["zone", "flux"])
    m = m.rename(columns={"slope": "estimate"}).merge(sd.rename(columns={"slope_sd": "sd"}), on=["zone", "flux"])
    err = m.estimate - m.truth
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = 100 * err / m.truth.abs()
    return score(m.assign(error=err, error_pct=pct))


def trend_summary(cal: pd.DataFrame) -> pd.DataFrame:
    """:func:`coverage_summary` of trend rows (n = zone trends), plus the median |error| in %."""
    s = coverage_summary(cal)
    keys = list(summary_keys(cal))
    pct = cal.assign(p=cal.error_pct.abs()).groupby(keys, sort=True).p.median().rename("median_abs_error_pct")
    return s.merge(pct.reset_index(), on=keys)


def summary_markdown(s: pd.DataFrame, unit: str = "zone-years") -> str:
    eff = "site_effects" in s
    lines = [
        "| method |"
        + (" site effects |" if eff else "")
        + f" network | flux | {unit} | inside ±1 SD | inside ±2 SD | median \\|error\\|/SD "
        "| 90th pct \\|error\\|/SD | median \\|error\\| | median SD |",
        "|---|" + ("---|" if eff else "") + "---|---|---|---|---|---|---|---|---|",
    ]
    for r in s.itertuples():
        lines.append(
            f"| {r.method} |"
            + (f" {r.site_effects} |" if eff else "")
            + f" {r.network} | {r.flux} | {r.n} | {100 * r.coverage1:.0f}% | "
            f"{100 * r.coverage2:.0f}% | {r.median_ratio:.2f} | {r.p90_ratio:.2f} | "
            f"{r.median_abs_error:.3g} | {r.median_sd:.3g} |"
        )
    return "\n".join(lines) + "\n"


def trend_pct_markdown(s: pd.DataFrame) -> str:
    """The trend summary's median |error| in % of the true trend, per group."""
    keys = [k for k in summary_keys(s) if k != "method"]
    lines = ["| method | " + " | ".join(keys) + " | median \\|trend error\\| (% of \\|true trend\\|) |"]
    lines.append("|---|" + "---|" * len(keys) + "---|")
    for r in s.itertuples():
        lines.append(
            f"| {r.method} | " + " | ".join(str(getattr(r, k)) for k in keys) + f" | {r.median_abs_error_pct:.0f}% |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- runs
def twin_name(network: str, seed: int, site_effects: str = "biased") -> str:
    """A calibration twin's directory name: ``realistic_101`` (biased site effects, as before
    the option existed, so that earlier calibration directories resume) or
    ``realistic_centred_101``."""
    return f"{network}_{seed}" if site_effects == "biased" else f"{network}_{site_effects}_{seed}"


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def truth_annual(ctx) -> pd.DataFrame:
    """True annual zone budgets (Tg C yr-1) of a twin run (same zones and code as the estimate)."""
    truth = open_grid(ctx.cfg.inputs.truth, chunks={"time": 12})  # canonical order, as read_truth checked it
    y0, y1 = ctx.years()
    truth = truth.sel(time=slice(f"{y0}-01-01", f"{y1}-12-31"))
    try:
        return budgets_mod.annual_budgets(truth[["gpp", "reco", "nee"]], ctx.zones())
    finally:
        truth.close()


def variants(ann: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """The scored variants of a run's budgets beyond the bootstrap SD: (label suffix, SD
    columns added in quadrature). ``+extrap`` where the budgets carry the extrapolation term,
    ``+network`` where they carry the network-simulation term, ``+extrap+network`` (the total)
    where both."""
    ext, net = "tg_c_sd_extrap" in ann, "tg_c_sd_network" in ann
    out = []
    if ext:
        out.append(("+extrap", ["tg_c_sd", "tg_c_sd_extrap"]))
    if net:
        out.append(("+network", ["tg_c_sd", "tg_c_sd_network"]))
    if ext and net:
        out.append(("+extrap+network", ["tg_c_sd", "tg_c_sd_extrap", "tg_c_sd_network"]))
    if "tg_c_sd_total" in ann and not ext and not net:  # budgets from before the terms were named
        out.append(("+extrap", ["tg_c_sd_total"]))
    return out


def twin_rows(run_dir: Path, truth: pd.DataFrame, method: str, meta: dict) -> pd.DataFrame:
    """Calibration rows of one method's run: every zone, year and flux with estimate, truth, SD."""
    ann = pd.read_csv(RunLayout(run_dir).budgets_annual)
    ann = ann[ann.zone.isin(ZONES) & ann.flux.isin(FLUXES)]
    m = ann.merge(
        truth[["zone", "flux", "year", "tg_c"]].rename(columns={"tg_c": "truth"}), on=["zone", "flux", "year"]
    )
    parts = [m.assign(method=method, sd=m.tg_c_sd)]
    nd = network_sd_without_distance(run_dir)
    for label, terms in variants(m):
        sd = np.sqrt(sum(m[t].fillna(0.0) ** 2 for t in terms))
        if nd is not None and "+network" in label:
            # the budgets' network term has the distance part: scored as +network+dist, and the
            # term without it (the default, network_distance = false) as +network
            parts.append(m.assign(method=method + label + "+dist", sd=sd))
            x = m.merge(nd, on=["zone", "year", "flux"], how="left")
            rest = [t for t in terms if t != "tg_c_sd_network"]
            sd = np.sqrt(sum(x[t].fillna(0.0) ** 2 for t in rest) + x.sd_nodist.fillna(0.0) ** 2)
            parts.append(x.drop(columns="sd_nodist").assign(method=method + label, sd=sd))
        else:
            parts.append(m.assign(method=method + label, sd=sd))
    d = pd.concat(parts, ignore_index=True).rename(columns={"tg_c": "estimate"})
    d = score(d.assign(**meta))
    return d[COLUMNS]


def has_distance_part(run_dir: Path) -> bool:
    """Whether the run's network simulation had its distance part (a non-zero
    ``distance_error`` in ``network/network_errors.parquet``)."""
    path = RunLayout(run_dir).network_errors
    if not path.exists():
        return False
    try:
        d = pd.read_parquet(path, columns=["distance_error"]).distance_error
    except (KeyError, ValueError):  # errors from before the column existed
        return False
    return bool((d != 0).any())


def network_sd_without_distance(run_dir: Path) -> pd.DataFrame | None:
    """The network term without its distance part (zone, year, flux, sd_nodist: the RMS over the
    replicates of error − distance_error), where the run's network simulation had the distance
    term on (``network/network_errors.parquet`` with a non-zero ``distance_error``); else None."""
    path = RunLayout(run_dir).network_errors
    e = pd.read_parquet(path) if path.exists() else None
    if e is None or "distance_error" not in e or not (e.distance_error != 0).any():
        return None
    e = e.assign(e2=(e.error - e.distance_error) ** 2)
    return np.sqrt(e.groupby(["zone", "year", "flux"]).e2.mean()).rename("sd_nodist").reset_index()


def twin_trend_rows(
    run_dir: Path, truth: pd.DataFrame, method: str, meta: dict, trend_method: str = "zhang"
) -> pd.DataFrame:
    """Trend rows of one method's run (:data:`TREND_COLUMNS`): every zone and flux's budget
    trend against the truth's, with the ± of the members' trends (``method``), and a row per
    variant of :func:`variants`: ``+network`` adds the network term of the trend
    (:func:`network_trend_sd`) in quadrature; ``+extrap`` keeps the members' ± (the
    extrapolation term is a level error, fully correlated across years: it adds nothing to a
    trend)."""
    lay = RunLayout(run_dir)
    ann = pd.read_csv(lay.budgets_annual)
    keep = lambda d: d[d.zone.isin(ZONES) & d.flux.isin(FLUXES)]  # noqa: E731
    est = annual_trends(keep(ann), method=trend_method)
    tru = annual_trends(keep(truth[["zone", "flux", "year", "tg_c"]]), method=trend_method)
    sd = trend_sd(keep(member_annual(pd.read_parquet(lay.members_monthly))), trend_method)
    d = score_trends(est, tru, sd).assign(method=method, **meta)
    parts = [d]
    labels = [label for label, _ in variants(ann)]
    net = None
    if any("+network" in label for label in labels) and lay.network_trends.exists():
        net = network_trend_sd(pd.read_csv(lay.network_trends))
    dist = has_distance_part(run_dir)
    for label in labels:
        if "+network" in label and net is not None:
            sd2 = sd.merge(net, on=["zone", "flux"], how="left")
            sd2 = sd2.assign(slope_sd=np.sqrt(sd2.slope_sd**2 + sd2.slope_sd_network.fillna(0.0) ** 2))
            t = score_trends(est, tru, sd2[["zone", "flux", "slope_sd"]]).assign(method=method + label, **meta)
            parts.append(t)
            if dist:  # the distance part is static in time: the same slope term with and without it
                parts.append(t.assign(method=method + label + "+dist"))
        else:
            parts.append(d.assign(method=method + label))
    return pd.concat(parts, ignore_index=True)[TREND_COLUMNS]


def network_trend_sd(terr: pd.DataFrame) -> pd.DataFrame:
    """The network-simulation term of a budget trend (zone, flux, slope_sd_network): the RMS
    over the replicates of their slope errors (``network/network_trends.csv``: replicate, zone,
    flux, error), as the trends stage adds it."""
    e = terr.assign(e2=terr.error.astype(float) ** 2)
    return np.sqrt(e.groupby(["zone", "flux"], sort=True).e2.mean()).rename("slope_sd_network").reset_index()


def run_twin(
    twin_dir: Path,
    run_root: Path,
    methods,
    *,
    n_estimators: int,
    n_bootstrap: int,
    block_km: float,
    extrapolation: bool = True,
    network: dict | None = None,
    cv_mode: str = "loso",
    progress_factory=None,
) -> tuple[pd.DataFrame, list[Path]]:
    """One twin: sites, forest + CV and the extrapolation term once; per bootstrap method the
    bootstrap, upscaling and budgets (the shared stages' outputs are copied, not recomputed).
    ``extrapolation=False``: no extrapolation term (no ``+extrap`` rows); the forests,
    bootstraps and budgets are the same. ``network``: ``[uncertainty]`` settings of the
    network-simulation term (``network_replicates``, ``network_trees``, ...; ``network = true``
    is set): the term is computed once, in the first method's run (it needs the final forests'
    maps, the same in every method's run), and copied to the others; it needs the
    leave-one-site-out CV, which runs when either term is asked for (``cv_mode``: ``"loso"``, the
    exact one, or ``"site_oob"``, its fast grouped out-of-bag stand-in, docs/models.md)."""
    cv = extrapolation or network is not None
    cfg = load_config(twin_dir / "config.toml")
    cfg.forest = replace(
        cfg.forest,
        n_estimators=n_estimators,
        n_bootstrap=n_bootstrap,
        importance_repeats=0,
        cv=cv_mode if cv else "none",
    )
    cfg.uncertainty = replace(cfg.uncertainty, extrapolation=extrapolation, block_km=block_km)
    if network is not None:  # with the distance part, so that both variants are scored
        cfg.uncertainty = replace(cfg.uncertainty, network=True, network_distance=True, **network)
    base = run_root / "shared"
    base.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg=cfg, out=base, progress_factory=progress_factory)
    spec = {st.name: st for st in STEPS}
    shared = [spec[n] for n in ("sites", "forest", "extrapolation")[: 3 if extrapolation else 2]]
    for st in shared:  # a resumed calibration keeps finished steps
        if not (base / st.writes[0]).exists():
            t0 = time.perf_counter()
            st.run(ctx)
            log.info(f"[{st.name}] {time.perf_counter() - t0:.0f} s")
    truth = truth_annual(ctx)
    out = []
    for m in methods:
        d = run_root / m
        if not RunLayout(d).budgets_annual.exists():
            d.mkdir(parents=True, exist_ok=True)
            items = [L.SITES, L.MODELS] + [L.CV] * cv + [L.UNCERTAINTY] * extrapolation
            if network is not None and (base / L.NETWORK).exists():
                items.append(L.NETWORK)
            for item in items:
                _copy(base / item, d / item)
            mctx = Context(
                cfg=replace(cfg, uncertainty=replace(cfg.uncertainty, method=m)),
                out=d,
                progress_factory=progress_factory,
            )
            t0 = time.perf_counter()
            for name in ("bootstrap", "upscale"):
                spec[name].run(mctx)
            if network is not None and not (d / L.NETWORK).exists():
                t1 = time.perf_counter()
                spec["network"].run(mctx)
                _copy(d / L.NETWORK, base / L.NETWORK)
                log.info(f"[network] {time.perf_counter() - t1:.0f} s")
            spec["budgets"].run(mctx)
            log.info(f"[{m}] bootstrap, upscale, budgets: {time.perf_counter() - t0:.0f} s")
        out.append(d)
    return truth, out


def run_calibration(
    out: Path,
    twins: list[dict],
    methods=BOOT_METHODS,
    *,
    resolution_km: float = 200.0,
    years: tuple[int, int] = (2011, 2020),
    n_estimators: int = 100,
    n_bootstrap: int = 10,
    block_km: float = 1000.0,
    n_sites: int = 200,
    n_site_months: int = 4900,
    network_tables: dict | None = None,
    extrapolation: bool = True,
    network: dict | None = None,
    cv_mode: str = "loso",
    progress_factory=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate each twin (``{"network", "seed"}``), run it with every method, and write
    calibration.csv, calibration_summary.csv/.md and calibration.png into ``out``. A rerun into
    the same directory reuses the twins and method runs already finished.

    ``network_tables``: network label -> a site table in the contract; a twin whose ``network``
    is such a label has that table's sites (``make_twin(network=...)``) in the world of the
    realistic twin of the same seed. ``progress_factory``: progress of the twins and of their
    stages (:mod:`abzflux.progress`)."""
    from .twin import TwinSpec, make_twin

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[pd.DataFrame] = []
    trend_rows: list[pd.DataFrame] = []
    prog = progress_factory("calibration twins") if progress_factory else None
    try:
        for i, t in enumerate(twins):
            effects = t.get("site_effects", "biased")
            name = twin_name(t["network"], t["seed"], effects)
            tdir = out / "twins" / name
            if not (tdir / "config.toml").exists():
                shutil.rmtree(tdir, ignore_errors=True)
                t0 = time.perf_counter()
                table = (network_tables or {}).get(t["network"])
                make_twin(
                    tdir,
                    TwinSpec(
                        resolution_km=resolution_km,
                        first_year=years[0],
                        last_year=years[1],
                        seed=t["seed"],
                        n_sites=n_sites,
                        n_site_months=n_site_months,
                        network="realistic" if table is not None else t["network"],
                        site_effects=effects,
                    ),
                    network=table,
                )
                log.info(f"twin {name}: {time.perf_counter() - t0:.0f} s")
            tmethod = load_config(tdir / "config.toml").trends.prewhitening
            truth, dirs = run_twin(
                tdir,
                out / "runs" / name,
                methods,
                n_estimators=n_estimators,
                n_bootstrap=n_bootstrap,
                block_km=block_km,
                extrapolation=extrapolation,
                network=network,
                cv_mode=cv_mode,
                progress_factory=progress_factory,
            )
            for m, d in zip(methods, dirs):
                meta = {"twin": name, "network": t["network"], "site_effects": effects, "seed": t["seed"]}
                rows.append(twin_rows(d, truth, m, meta))
                trend_rows.append(twin_trend_rows(d, truth, m, meta, tmethod))
            cal = pd.concat(rows, ignore_index=True)
            cal.to_csv(out / "calibration.csv", index=False)  # after every twin: a partial table is usable
            tcal = pd.concat(trend_rows, ignore_index=True)
            tcal.to_csv(out / "calibration_trends.csv", index=False)
            if prog is not None:
                prog(i + 1, len(twins))
    finally:
        if prog is not None:
            prog(None, None)
    summ = coverage_summary(cal)
    summ.to_csv(out / "calibration_summary.csv", index=False)
    tsumm = trend_summary(tcal)
    tsumm.to_csv(out / "calibration_trends_summary.csv", index=False)
    (out / "calibration_summary.md").write_text(
        f"# Uncertainty calibration on {cal.twin.nunique()} twins\n\n"
        f"{resolution_km:g}-km twins, {years[0]}–{years[1]}, {n_estimators} trees, {n_bootstrap} bootstrap forests, "
        f"blocks of {block_km:g} km. One row per method × network × flux; a zone-year is one zone's annual "
        f"budget in one year ({len(ZONES)} zones). A calibrated normal ± covers 68.3 % at ±1 SD and 95.4 % "
        "at ±2 SD.\n\n" + summary_markdown(summ) + "\n## Budget trends\n\n"
        f"Theil–Sen slope of each zone's annual budget over {years[0]}–{years[1]} (Tg C yr-2) against the "
        "truth's; ± = SD of the bootstrap members' slopes. One row per method × network × flux; n = zone "
        "trends (zones × twins).\n\n" + summary_markdown(tsumm, unit="zone trends") + "\n" + trend_pct_markdown(tsumm)
    )
    plot_coverage(summ, out / "calibration.png")
    return cal, summ


def plot_coverage(summ: pd.DataFrame, path: Path) -> None:
    """Coverage at ±2 SD per method, one panel per flux, bars per network; the nominal 95.4 %."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fluxes = [f for f in FLUXES if f in set(summ.flux)]
    methods = list(dict.fromkeys(summ.method))
    if "site_effects" in summ:  # one bar per network and site-effects model
        summ = summ.assign(network=summ.network + np.where(summ.site_effects == "biased", "", ", " + summ.site_effects))
    nets = sorted(set(summ.network))
    fig, axes = plt.subplots(1, len(fluxes), figsize=(4.2 * len(fluxes), 3.6), sharey=True, squeeze=False)
    for ax, f in zip(axes[0], fluxes):
        for j, n in enumerate(nets):
            s = summ[(summ.flux == f) & (summ.network == n)].set_index("method").reindex(methods)
            ax.bar(
                np.arange(len(methods)) + (j - (len(nets) - 1) / 2) * 0.76 / len(nets),
                100 * s.coverage2.to_numpy(),
                width=0.76 / len(nets),
                label=f"{n} network",
            )
        ax.axhline(95.4, color="k", lw=0.8, ls="--")
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{f}: truth inside ±2 SD")
        ax.set_ylim(0, 100)
    axes[0][0].set_ylabel("zone-years covered (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
