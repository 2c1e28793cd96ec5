"""What a step gets: the config, the run directory's :class:`~abzflux.layout.RunLayout`, and the
inputs, read and validated once per process on first use (docs/architecture.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import xarray as xr

from .budgets import permafrost_zones
from .compare import read_references
from .config import Config
from .errors import InputError
from .fire import aggregate_fire, fine_factor
from .formats import check_same_grid, read_fire, read_predictors, read_site_table, read_truth, read_zones
from .layout import RunLayout
from .predictors import VEG_RECODE, PredictorSet, select_sites

log = logging.getLogger(__name__)


@dataclass
class Context:
    cfg: Config
    out: Path
    progress_factory: Callable | None = None  # label -> update(done, total) (the CLI's progress bars), or None
    hashes: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.out)

    def progress(self, label: str):
        """A progress callback ``update(done, total)`` (``update(None, None)`` ends it), or None."""
        return self.progress_factory(label) if callable(self.progress_factory) else None

    def input_paths(self) -> dict:
        """The given inputs by name (``references``: a list of paths)."""
        out = {k: getattr(self.cfg.inputs, k) for k in ("sites", "predictors", "zones", "fire", "truth")}
        out["references"] = self.cfg.inputs.references or None
        return {k: v for k, v in out.items() if v is not None}

    # Inputs are read and validated once per process, on first use.
    @property
    def predictor_set(self) -> PredictorSet:
        """The declared predictor set (``[predictors]``; default the paper's 17)."""
        if "pset" not in self.cache:
            self.cache["pset"] = self.cfg.predictor_set()
        return self.cache["pset"]

    def sites(self) -> pd.DataFrame:
        """The site table, with the ``[sites]`` row filters applied (logged)."""
        if "sites" not in self.cache:
            self.cache["sites"] = select_sites(
                read_site_table(self.cfg.inputs.sites), self.cfg.sites, self.cfg.inputs.sites
            )
        return self.cache["sites"]

    def truth(self) -> xr.Dataset | None:
        """A twin's true fluxes (compared with the estimates in the summary)."""
        if self.cfg.inputs.truth is None:
            return None
        if "truth" not in self.cache:
            ds = read_truth(self.cfg.inputs.truth, like=self.predictors())
            y0, y1 = self.years()
            t = pd.DatetimeIndex(ds.time.values)
            missing = pd.date_range(f"{y0}-01-01", f"{y1}-12-01", freq="MS").difference(t)
            if len(missing):
                raise InputError(
                    self.cfg.inputs.truth,
                    f"{len(missing)} month(s) of the run's years missing",
                    column="time",
                    where=", ".join(m.strftime("%Y-%m") for m in missing[:5]),
                    expected=f"every month of {y0}-{y1}",
                )
            self.cache["truth"] = ds
        return self.cache["truth"]

    def predictors(self) -> xr.Dataset:
        if "pred" not in self.cache:
            self.cache["pred"] = read_predictors(self.cfg.inputs.predictors, predictor_set=self.predictor_set)
        return self.cache["pred"]

    def raw_zones(self) -> xr.Dataset:
        """The zones file as read: ``permafrost`` is the file's value (the site table keeps it)."""
        if "zones_raw" not in self.cache:
            self.cache["zones_raw"] = read_zones(self.cfg.inputs.zones, like=self.predictors())
        return self.cache["zones_raw"]

    def zones(self) -> xr.Dataset:
        """The run's zones: ``permafrost`` is the membership under the ``[budgets]`` permafrost
        rule (:func:`abzflux.budgets.permafrost_zones`), the one every budget and share uses."""
        if "zones" not in self.cache:
            b = self.cfg.budgets
            self.cache["zones"] = permafrost_zones(self.raw_zones(), b.permafrost, b.permafrost_threshold)
        return self.cache["zones"]

    def veg(self) -> xr.DataArray:
        """Static vegetation classes after recoding (for vegetation × region zones)."""
        v = self.predictors()["veg_type"]
        for a, b in VEG_RECODE.items():
            v = v.where(v != a, b)
        return v

    def fire(self) -> xr.Dataset | None:
        if self.cfg.inputs.fire is None:
            return None
        if "fire" not in self.cache:
            path, pred = self.cfg.inputs.fire, self.predictors()
            ds = read_fire(path)
            k = fine_factor(ds, pred)
            if k > 1:  # a finer fire grid nested in the analysis grid: aggregate (conserving emissions)
                log.info(f"fire file is on a {k}x finer grid: aggregated onto the analysis grid")
                ds = aggregate_fire(ds, k).assign_coords(y=pred.y.values, x=pred.x.values)
            check_same_grid(ds, pred, path, self.cfg.inputs.predictors)
            f0 = self.cfg.fire.first_year
            if f0 is not None:  # the fire period (paper: 2002-2020); NEE + fire only where fire is counted
                ds = ds.sel(time=slice(f"{f0}-01-01", None))
            self.cache["fire"] = ds
        return self.cache["fire"]

    def references(self) -> list:
        """The reference products (docs/compare.md), read and checked on first use."""
        if not self.cfg.inputs.references:
            return []
        if "references" not in self.cache:
            self.cache["references"] = read_references(
                self.cfg.inputs.references, self.predictors(), self.years(), self.fire(), self.cfg.compare.subtract_fire
            )
        return self.cache["references"]

    def client(self):
        """A dask.distributed client when ``run.scheduler`` is set (folds run on the cluster)."""
        addr = self.cfg.run.scheduler
        if not addr:
            return None
        if "client" not in self.cache:
            from dask.distributed import Client, LocalCluster

            if addr == "local":
                self.cache["cluster"] = LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
                self.cache["client"] = Client(self.cache["cluster"])
            else:
                self.cache["client"] = Client(addr)
            client = self.cache["client"]
            log.info(f"dask.distributed: {client}; dashboard: {client.dashboard_link or 'none'}")
        return self.cache["client"]

    def close(self) -> None:
        for k in ("client", "cluster"):
            if k in self.cache:
                self.cache.pop(k).close()

    def years(self) -> tuple[int, int]:
        """The run's calendar years: ``run.years``, or the first to the last complete year of
        the predictor stack. Every month of every year in the range must be in the stack."""
        yr = self.cfg.run.year_range(self.cfg.source)
        t = pd.DatetimeIndex(self.predictors().time.values)
        full = t.to_series().groupby(t.year).size()
        full = full[full == 12].index
        if len(full) == 0:
            raise InputError(
                self.cfg.inputs.predictors,
                "no complete calendar year of monthly predictors",
                column="time",
                expected="12 monthly steps per year",
            )
        y0, y1 = (int(full.min()), int(full.max())) if yr is None else yr
        want = pd.date_range(f"{y0}-01-01", f"{y1}-12-01", freq="MS")
        missing = want.difference(t)
        if len(missing):
            months = ", ".join(m.strftime("%Y-%m") for m in missing[:12]) + (" ..." if len(missing) > 12 else "")
            raise InputError(
                self.cfg.inputs.predictors,
                f"{len(missing)} month(s) of {y0}-{y1} missing from the predictor stack: {months}",
                column="time",
                expected=f"every month of {y0}-{y1} (set run.years to a period the stack covers)",
            )
        left = t[(t.year < y0) | (t.year > y1)]
        if yr is None and len(left) and not self.cache.get("years_warned"):
            # the run covers less than the stack: say so once (a trailing partial year is common)
            self.cache["years_warned"] = True
            log.warning(
                "%s: the run covers %d-%d, the complete years of the predictor stack; %d month(s) of "
                "incomplete years are left out (%s to %s; set run.years to choose the period)",
                self.cfg.inputs.predictors,
                y0,
                y1,
                len(left),
                left.min().strftime("%Y-%m"),
                left.max().strftime("%Y-%m"),
            )
        return y0, y1
