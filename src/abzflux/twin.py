"""A synthetic Arctic-Boreal "twin": a world with a known true flux field.

Real flux, meteorology and remote-sensing inputs cannot be downloaded here, so the project
ships a generator that writes a complete study input in exactly the formats a user brings real
data in (docs/formats.md), plus the truth it was generated from:

* the real default domain (:mod:`abzflux.domain`: GLOBE land, MODIS land cover, ERA5 Köppen
  biomes, Natural Earth regions), aggregated to ``resolution_km``;
* the paper's 17 predictors: real ERA5 temperature climatology and solar geometry, plus
  synthetic weather anomalies, a warming trend, snow, soil temperature and moisture, NDVI with
  greening and fire scars that recover over years, CO2 rising as at Barrow;
* zones (land fraction, biome, region, permafrost) and fire (emissions, burned fraction);
* true monthly GPP, Reco and NEE = Reco - GPP from :func:`true_fluxes`, a light-use-efficiency
  GPP and a Lloyd-Taylor respiration, plus a post-fire legacy on NEE that the predictors do not
  show (sinks over-predicted in the first ~7 years after a fire, under-predicted later);
* ~200 sites with the real network's bias (dense in Alaska, Fennoscandia and Canada, sparse in
  Siberia), eddy covariance and chamber records, disturbed sites with years since fire, site
  random effects and measurement noise, and fewer GPP/Reco rows than NEE rows.

Everything is driven by one ``numpy.random.Generator`` seeded with ``seed``: the same arguments
give identical files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import dask.array as dask_array
import h5netcdf
import numpy as np
import pandas as pd
import xarray as xr
from pyproj import CRS, Transformer
from scipy.ndimage import gaussian_filter

from . import budgets as budgets_mod
from .domain import BIOMES, CRS_EPSG, REGIONS, load_domain
from .formats import write_crs
from .predictors import BY_NAME, STACK_VARIABLES, VEG_CLASSES
from .twin_network import (
    HARVEST_LABELS,
    THAW_LABELS,
    NetworkPlacement,
    check_network,
    place_network,
)
from .vocab import FLUX_UNITS

DAYS = np.array([31, 28.25, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])

# Vegetation class parameters: NDVI in summer and winter, light-use efficiency (g C MJ-1 APAR,
# before the common scale), cover shares tree / non-tree / non-vegetated (%).
VEG_PARAMS = {
    21: (0.60, 0.05, 0.85, (1, 80, 19)),
    30: (0.75, 0.20, 1.05, (35, 55, 10)),
    31: (0.40, 0.03, 0.65, (0.5, 45, 54.5)),
    33: (0.68, 0.06, 0.90, (3, 82, 15)),
    41: (0.62, 0.05, 0.90, (1, 85, 14)),
    50: (0.80, 0.60, 1.10, (60, 35, 5)),
    60: (0.83, 0.15, 1.30, (60, 35, 5)),
    70: (0.76, 0.32, 1.00, (55, 37, 8)),
    80: (0.73, 0.15, 1.05, (40, 50, 10)),
    90: (0.80, 0.22, 1.15, (55, 38, 7)),
    120: (0.62, 0.12, 0.85, (15, 65, 20)),
    160: (0.68, 0.10, 0.95, (10, 78, 12)),
}
# MODIS IGBP class -> paper vegetation class, per biome (1 boreal, 2 tundra).
IGBP_TO_VEG = {
    1: {
        1: 70,
        2: 50,
        3: 80,
        4: 60,
        5: 90,
        6: 120,
        7: 120,
        8: 30,
        9: 120,
        10: 30,
        11: 160,
        12: 30,
        13: 30,
        14: 30,
        16: 120,
    },
    2: {1: 33, 2: 33, 3: 33, 4: 33, 5: 33, 6: 33, 7: 33, 8: 33, 9: 33, 10: 21, 11: 41, 12: 21, 13: 21, 14: 21, 16: 31},
}

# Flux sites cluster around real research hubs (approximate real coordinates); weights give
# the real network's bias: dense in Alaska, Fennoscandia and Canada, sparse in Siberia.
HUBS = [  # (lat, lon, weight)
    (64.8, -147.7, 3.0),
    (68.6, -149.6, 2.5),
    (71.3, -156.6, 2.0),
    (63.9, -145.7, 1.0),
    (65.0, -164.0, 0.8),
    (61.3, -163.3, 0.6),  # Alaska
    (53.9, -105.1, 2.0),
    (55.9, -98.5, 1.5),
    (49.7, -74.3, 1.0),
    (61.3, -121.3, 1.5),
    (64.9, -111.6, 1.0),
    (58.7, -93.8, 1.0),
    (60.7, -135.0, 0.5),
    (69.1, -105.1, 0.4),
    (50.5, -85.0, 0.5),  # Canada
    (61.8, 24.3, 3.0),
    (67.4, 26.6, 2.0),
    (68.3, 18.8, 2.0),
    (64.2, 19.6, 2.0),
    (60.1, 17.5, 1.0),
    (78.2, 15.9, 0.8),
    (74.5, -20.6, 1.0),
    (64.1, -51.4, 0.8),
    (69.3, -53.5, 0.5),
    (56.5, 32.9, 0.8),
    (64.5, -21.2, 0.3),  # Europe incl. Greenland
    (62.3, 129.6, 1.2),
    (68.6, 161.3, 1.2),
    (71.6, 128.9, 0.7),
    (60.8, 89.4, 0.4),
    (70.8, 147.5, 0.8),
    (67.1, 62.9, 0.4),  # Siberia
]


@dataclass(frozen=True)
class TwinSpec:
    """What defines a twin; written to ``twin.json``."""

    resolution_km: float = 50  # any spacing; 10-km multiples aggregate the base grid, others remap it
    first_year: int = 2001
    last_year: int = 2020
    seed: int = 448
    n_sites: int = 200
    n_site_months: int = 4900
    network: str = "realistic"  # or "uniform": sites spread over the domain by area
    fire_spinup_years: int = 20
    site_effects: str = "biased"  # or "centred": the site observations are unbiased (SITE_EFFECTS)


# Observation model of the site fluxes (docs/twin.md, "Sites"): correlated lognormal site effects
# (SD of log GPP and log Reco factors, their correlation), disturbance effects on the log factor,
# multiplicative measurement noise (SD of the log), NEE noise (g C m-2 month-1).
SITE_EFFECT_SD = (0.20, 0.25)
SITE_EFFECT_R = 0.6
THAW_RECO_EFFECT = 0.25
HARVEST_GPP_EFFECT = -0.3
MEASUREMENT_SD = 0.10
NEE_NOISE_SD = 3.0
#: ``TwinSpec.site_effects``: "biased" (the default, the observation model above: lognormal
#: factors whose mean exceeds 1, a +0.2 g C m-2 month-1 offset, harvest and thermokarst effects,
#: burn-scar sites observed as if fully burned) or "centred" (the same random draws, but every
#: multiplicative factor has mean exactly 1 (log mean −σ²/2), no offset, the harvest and
#: thermokarst labels carry no effect and burn-scar sites observe their cell: the expected
#: observation at a site-month is the true flux of its cell; docs/twin.md).
SITE_EFFECTS = ("biased", "centred")
#: The biased model's additive offset of observed GPP and Reco (g C m-2 month-1).
SITE_OFFSET = 0.2


# --------------------------------------------------------------------------- helpers
def _smooth(rng: np.random.Generator, shape, scale_km: float, res_km: float) -> np.ndarray:
    """Spatially smooth standard-normal noise with correlation length ``scale_km``."""
    f = gaussian_filter(rng.standard_normal(shape), sigma=max(scale_km / res_km, 0.5), mode="nearest")
    return f / max(f.std(), 1e-12)


def _toa_monthly(lat_deg: np.ndarray) -> np.ndarray:
    """Monthly mean top-of-atmosphere shortwave (W m-2), FAO-56 daily Ra averaged by month.

    Accumulated day by day: a (365, ny, nx) float64 block was 3 GB per temporary on the 8-km
    grid. The day terms are computed on the whole year (as before, so every value is identical)
    and the sum runs over days in order, as ``mean(0)`` over the day axis does."""
    lat = np.deg2rad(lat_deg)
    doy = np.arange(1, 366).reshape((365,) + (1,) * lat.ndim)
    decl = 0.409 * np.sin(2 * np.pi * doy / 365 - 1.39)
    dr = 1 + 0.033 * np.cos(2 * np.pi * doy / 365)
    c, tan_d, sin_d, cos_d = 1361.0 / np.pi * dr, np.tan(decl), np.sin(decl), np.cos(decl)
    m_tan, sin_l, cos_l = -np.tan(lat), np.sin(lat), np.cos(lat)
    ends = np.cumsum([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
    starts = np.r_[0, ends[:-1]]
    out = np.empty((12, *lat.shape))
    for mi, (s, e) in enumerate(zip(starts, ends)):
        acc = out[mi]
        for d in range(s, e):
            ws = np.arccos(np.clip(m_tan * tan_d[d], -1, 1))
            ra = c[d] * (ws * sin_l * sin_d[d] + cos_l * cos_d[d] * np.sin(ws))
            if d == s:
                acc[...] = ra
            else:
                acc += ra
        acc /= e - s
    return out


def _es_kpa(t):
    """Saturation vapour pressure (kPa), Tetens over water/ice."""
    return np.where(t >= 0, 0.6108 * np.exp(17.27 * t / (t + 237.3)), 0.6108 * np.exp(21.875 * t / (t + 265.5)))


def co2_barrow(year, month):
    """Barrow-like monthly CO2 (ppm): trend, seasonal cycle (max in May, min in August)."""
    t = np.asarray(year) - 2001 + (np.asarray(month) - 0.5) / 12
    return (
        371.0
        + 2.05 * t
        + 0.004 * t**2
        + 8.0 * np.cos(2 * np.pi * (np.asarray(month) - 5) / 12)
        + 2.0 * np.cos(4 * np.pi * (np.asarray(month) - 7) / 12)
    )


def fire_legacy(age_years):
    """Post-fire NEE legacy per unit burned fraction (g C m-2 month-1) in May-July.

    Positive (less uptake than the vegetation signal implies) for ~7 years after the fire,
    negative (vigorous regrowth) afterwards, fading after ~30 years. Not visible to the
    predictors: this is what the paper's years-since-fire bias correction targets.
    """
    a = np.maximum(np.asarray(age_years, dtype=np.float64), 0.0)
    return 14.0 * np.exp(-a / 6.0) - 6.0 * (a / 12.0) * np.exp(1.0 - a / 12.0)


LEGACY_SEASON = np.array([0, 0, 0, 0, 1.0, 1.0, 1.0, 0.5, 0, 0, 0, 0])  # applies May-Jul, half in Aug


def true_fluxes(p: dict, legacy: np.ndarray | float = 0.0, month: np.ndarray | int | None = None) -> dict:
    """The twin's true monthly fluxes (g C m-2 month-1) from predictor values.

    ``p`` maps predictor names (and the static parameters ``lue``, ``r10``) to arrays of one
    shape. GPP is a light-use-efficiency model: absorbed PAR (fAPAR from NDVI) with light
    saturation, limited by temperature, VPD, snow and soil moisture, fertilised by CO2. Reco is
    heterotrophic respiration (Lloyd & Taylor 1994 on soil temperature, scaled by soil carbon,
    permafrost and wetness) plus 45 % of GPP. ``legacy`` (g C m-2 month-1, already scaled by the
    season and burned fraction) is added to Reco where positive and to GPP where negative, so
    that NEE = Reco - GPP carries it and both components stay non-negative.
    """
    days = DAYS[np.asarray(month) - 1] if month is not None else 30.4
    par_mj = p["srad"] * 0.48 * 86400.0 * days / 1e6
    fapar = np.clip(1.25 * p["ndvi"] - 0.15, 0.0, 0.95)
    apar = fapar * par_mj
    light = apar / (1.0 + apar / 400.0)
    f_t = 1.0 / (1.0 + np.exp(-(p["lst"] - 6.0) / 2.5))
    f_vpd = np.exp(-0.45 * np.maximum(p["vpd"] - 0.6, 0.0))
    f_snow = 1.0 - 0.9 * p["snow_cover"] / 100.0
    f_sm = np.clip((p["soil_moisture"] - 0.06) / 0.14, 0.25, 1.0)
    f_co2 = 1.0 + 0.35 * np.log(p["co2"] / 371.0)
    gpp = 1.45 * p["lue"] * light * f_t * f_vpd * f_snow * f_sm * f_co2
    ts = p["soil_temp"] - 273.15
    lt = np.exp(308.56 * (1.0 / 56.02 - 1.0 / (np.maximum(ts, -40.0) + 46.02)))
    g_sm = np.clip(1.0 - 3.0 * (p["soil_moisture"] - 0.33) ** 2, 0.45, 1.0)
    rh = p["r10"] * lt * g_sm
    reco = rh + 0.45 * gpp + 1.0
    legacy = np.asarray(legacy)
    reco = reco + np.maximum(legacy, 0.0)
    gpp = gpp + np.maximum(-legacy, 0.0)
    return {"gpp": gpp, "reco": reco, "nee": reco - gpp}


# --------------------------------------------------------------------------- the world
class _World:
    """Static fields and the fire history of one twin."""

    def __init__(self, spec: TwinSpec):
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        d = load_domain(spec.resolution_km)
        self.dom = d
        self.res_km = float(spec.resolution_km)
        self.mask = d.land_fraction.values > 0
        self.shape = self.mask.shape
        self.lat = d.lat.values.astype(np.float64)
        self.lon = d.lon.values.astype(np.float64)
        self.t2m = d.t2m.values.astype(np.float64)
        self.biome = d.biome.values
        self.region = d.region.values
        self._statics()
        self._fires()

    def _statics(self):
        rng, sh, r = self.rng, self.shape, self.res_km
        t2m = self.t2m
        self.mat = t2m.mean(0)
        self.tjul = t2m.max(0)
        igbp = self.dom.igbp.values
        veg = np.zeros(sh, np.int16)
        for b, table in IGBP_TO_VEG.items():
            default = 120 if b == 1 else 31
            mapped = np.vectorize(lambda c: table.get(int(c), default))(igbp)
            veg = np.where(self.biome == b, mapped, veg)
        veg = np.where((self.biome == 2) & (veg == 33) & (self.tjul < 5.0), 31, veg)  # high-Arctic shrubs
        veg = np.where((self.biome == 1) & (veg == 30) & (self.tjul < 14.0), 120, veg)
        veg = np.where(self.mask & (veg == 0), 31, veg)
        self.veg = np.where(self.mask, veg, 0).astype(np.int16)
        par = {k: np.zeros(sh) for k in ("ndvi_max", "ndvi_win", "lue", "tree", "nontree", "nonveg")}
        for code, (nmax, nwin, lue, cover) in VEG_PARAMS.items():
            m = self.veg == code
            for key, val in zip(par, (nmax, nwin, lue, *cover)):
                par[key][m] = val
        self.par = par
        wet = np.isin(self.veg, (41, 160))
        self.pf_prob = np.clip(1 / (1 + np.exp((self.mat + 2.0) / 1.6)) + 0.05 * _smooth(rng, sh, 300, r), 0, 1)
        # Permafrost region: every permafrost zone down to isolated patches (IPA-like).
        self.permafrost = (self.pf_prob >= 0.15).astype(np.float32)
        self.cti = np.clip(7.5 + 1.5 * _smooth(rng, sh, 150, r) + 3.0 * wet, 3.0, 18.0)
        self.soil_ph = np.clip(5.3 + 0.5 * (self.biome == 2) - 0.7 * wet + 0.4 * _smooth(rng, sh, 400, r), 3.5, 8.0)
        self.soc = np.clip(
            np.exp(np.log(14.0) + 0.35 * self.pf_prob + 0.7 * wet + 0.3 * _smooth(rng, sh, 250, r)), 2.0, 120.0
        )  # kg C m-2, 0-2 m
        self.ndvi_max = np.clip(par["ndvi_max"] + 0.04 * _smooth(rng, sh, 200, r), 0.15, 0.92)
        self.transm = np.clip(0.50 + 0.04 * _smooth(rng, sh, 800, r), 0.35, 0.65)
        self.sm_base = np.clip(0.27 + 0.15 * wet + 0.04 * _smooth(rng, sh, 300, r), 0.08, 0.58)
        cover = np.stack([par["tree"], par["nontree"], par["nonveg"]]) * np.exp(0.25 * _smooth(rng, (3, *sh), 150, r))
        self.cover = cover / np.maximum(cover.sum(0), 1e-9) * 100.0
        self.r10 = 72.0 * (self.soc / 15.0) ** 0.4 * (1.0 - 0.5 * self.pf_prob) * (1.0 + 0.03 * (self.cti - 7.5))
        # Greening rate (NDVI yr-1): faster in the tundra and where it is warming most.
        self.greening = np.where(self.biome == 2, 0.0030, 0.0018) * (1 + 0.3 * _smooth(rng, sh, 500, r))
        # Warming trend (degC yr-1), Arctic-amplified.
        self.warming = 0.035 + 0.025 * np.clip((self.lat - 55) / 20, 0, 1)

    def _fires(self):
        """Fire events (cell, year, month, burned fraction), spin-up years included."""
        s, rng = self.spec, self.rng
        years = np.arange(s.first_year - s.fire_spinup_years, s.last_year + 1)
        # Annual probability that a cell has a fire, by region and biome (boreal >> tundra).
        p_region = np.array([0.0, 0.021, 0.021, 0.006, 0.028])[self.region]
        p = np.where(self.biome == 1, p_region, 0.15 * p_region) * self.mask
        forest = np.isin(self.veg, (50, 60, 70, 80, 90, 30))
        fuel = np.where(self.biome == 1, np.where(forest, 2600.0, 1500.0), 700.0)  # g C m-2 burned
        ev = []
        for y in years:
            anom = 0.6 * _smooth(rng, self.shape, 600, self.res_km)  # fire-weather year
            hit = rng.random(self.shape) < p * np.exp(anom)
            iy, ix = np.nonzero(hit)
            bf = rng.uniform(0.03, 0.5, size=iy.size)
            mon = rng.choice([6, 7, 8], p=[0.3, 0.45, 0.25], size=iy.size)
            ev.append(
                pd.DataFrame({"iy": iy, "ix": ix, "year": y, "month": mon, "bf": bf, "emission": bf * fuel[iy, ix]})
            )
        self.fires = pd.concat(ev, ignore_index=True)

    # scars and legacies at a given month, from all fires up to then
    def scars(self, year: int, month: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = self.fires
        t = year + (month - 0.5) / 12
        age = t - (f.year.values + (f.month.values - 0.5) / 12)
        ok = age >= 0
        iy, ix, bf, a = f.iy.values[ok], f.ix.values[ok], f.bf.values[ok], age[ok]
        ndvi_scar = np.zeros(self.shape)
        tree_scar = np.zeros(self.shape)
        legacy = np.zeros(self.shape)
        np.add.at(ndvi_scar, (iy, ix), bf * np.exp(-a / 4.0))
        np.add.at(tree_scar, (iy, ix), bf * np.exp(-a / 15.0))
        np.add.at(legacy, (iy, ix), bf * fire_legacy(a))
        return np.clip(ndvi_scar, 0, 1), np.clip(tree_scar, 0, 1), legacy


class _Weather:
    """Monthly weather anomalies: spatially smooth, AR(1) in time."""

    def __init__(self, world: _World, rng: np.random.Generator):
        self.w, self.rng = world, rng
        self.t_anom = np.zeros(world.shape)
        self.c_anom = np.zeros(world.shape)

    def step(self):
        w, rng, rho = self.w, self.rng, 0.5
        self.t_anom = rho * self.t_anom + np.sqrt(1 - rho**2) * _smooth(rng, w.shape, 700, w.res_km)
        self.c_anom = rho * self.c_anom + np.sqrt(1 - rho**2) * _smooth(rng, w.shape, 500, w.res_km)
        return self.t_anom, self.c_anom


def predictors_for_month(w: _World, wx: _Weather, year: int, month: int, toa: np.ndarray, noise):
    """All stack predictors for one month, plus the flux parameters (dict of 2-D arrays)."""
    t_anom, c_anom = wx.step()
    mi = month - 1
    summer = max(np.cos(2 * np.pi * (month - 7) / 12), 0.0)
    sd_t = 1.2 + 1.3 * (1 - summer)
    tyear = year - 2000.5 + (month - 0.5) / 12
    tair = w.t2m[mi] + w.warming * tyear + sd_t * t_anom
    tair_prev = w.t2m[(mi - 1) % 12] + w.warming * tyear + sd_t * 0.5 * t_anom
    tlag = 0.6 * tair + 0.4 * tair_prev
    snow = 100.0 / (1.0 + np.exp((tair - 0.5) / 1.8))
    snow = np.clip(snow + 3.0 * noise(), 0.0, 100.0)
    sf = snow / 100.0
    transm = np.clip(w.transm - 0.04 * c_anom, 0.25, 0.75)
    srad = toa[mi] * transm
    rh = np.clip(0.80 - 0.14 * summer + 0.04 * c_anom, 0.35, 0.98)
    vpd = _es_kpa(tair) * (1.0 - rh)
    soil_t = np.where(tlag < 0, tlag * (1.0 - 0.7 * sf) - 0.3, 0.85 * tlag + 0.5)
    soil_t = soil_t - 2.0 * w.pf_prob * summer + 0.3 * noise()
    melt = np.exp(-0.5 * ((month - 5.7) / 0.9) ** 2)
    dry = np.exp(-0.5 * ((month - 8.0) / 1.2) ** 2)
    frozen = np.clip(-soil_t / 5.0, 0.0, 1.0)
    sm = w.sm_base * (1.0 - 0.35 * frozen) + 0.06 * melt - 0.04 * dry - 0.012 * t_anom * summer + 0.01 * noise()
    sm = np.clip(sm, 0.04, 0.62)
    ndvi_scar, tree_scar, legacy = w.scars(year, month)
    nmax = np.clip(w.ndvi_max + w.greening * (year - 2000), 0.1, 0.95) * (1.0 - 0.5 * ndvi_scar)
    green = 1.0 / (1.0 + np.exp(-(tair - 4.0) / 2.2))
    ndvi = w.par["ndvi_win"] + (nmax - w.par["ndvi_win"]) * green
    ndvi = np.clip(ndvi * (1.0 - 0.55 * sf) + 0.02 * noise(), -0.05, 0.95)
    lst = tair + 3.5 * summer * (1.0 - sf) - 1.5 * sf + 0.5 * noise()
    tree = w.cover[0] * (1.0 - 0.9 * tree_scar) * (1 + 0.004 * (year - 2000))
    nonveg = w.cover[2] * (1 + 0.5 * tree_scar) * (1 - 0.005 * (year - 2000))
    nontree = np.clip(100.0 - tree - nonveg, 0.0, 100.0)
    p = {
        "srad": srad,
        "vpd": vpd,
        "co2": np.full(w.shape, co2_barrow(year, month)),
        "snow_cover": snow,
        "soil_temp": soil_t + 273.15,
        "soil_moisture": sm,
        "ndvi": ndvi,
        "lst": lst,
        "nontree_pct": nontree,
        "nonveg_pct": nonveg,
        "tree_pct": tree,
        "veg_type": w.veg,
        "cti": w.cti,
        "soil_ph": w.soil_ph,
        "soc_stock": w.soc,
        "permafrost_prob": w.pf_prob,
        "lue": w.par["lue"],
        "r10": w.r10,
    }
    return p, legacy * LEGACY_SEASON[mi], ndvi_scar


# --------------------------------------------------------------------------- sites
def _record_lengths(rng, n_sites, n_rows, max_months):
    raw = rng.lognormal(np.log(12.0), 1.15, n_sites)
    lo, hi = 1e-3, 1e3
    for _ in range(100):
        s = np.sqrt(lo * hi)
        tot = np.clip(np.rint(raw * s), 1, max_months).sum()
        lo, hi = (s, hi) if tot < n_rows else (lo, s)
    return np.clip(np.rint(raw * hi), 1, max_months).astype(int)


def _place_sites(w: _World, rng) -> pd.DataFrame:
    """Site cells and exact coordinates (inside their cell, on domain land)."""
    s = w.spec
    res = s.resolution_km * 1000.0
    x, y = w.dom.x.values, w.dom.y.values
    to_xy = Transformer.from_crs(4326, CRS_EPSG, always_xy=True)
    to_ll = Transformer.from_crs(CRS_EPSG, 4326, always_xy=True)
    hubs = np.array(HUBS)
    hx, hy = to_xy.transform(hubs[:, 1], hubs[:, 0])
    iy_land, ix_land = np.nonzero(w.mask)
    rows = []
    fire_ev = w.fires[(w.fires.year >= s.first_year - 15) & (w.fires.year <= s.last_year - 2) & (w.fires.bf > 0.1)]
    for i in range(s.n_sites):
        fire_site = rng.random() < 0.09 and len(fire_ev) > 0
        fire_year = fire_month = np.nan
        if fire_site:  # a site set up in a burn scar
            e = fire_ev.iloc[int(rng.integers(len(fire_ev)))]
            cy, cx = int(e.iy), int(e.ix)
            fire_year, fire_month = int(e.year), int(e.month)
        elif s.network == "uniform":
            k = int(rng.integers(iy_land.size))
            cy, cx = iy_land[k], ix_land[k]
        else:
            for _ in range(200):
                h = rng.choice(len(hubs), p=hubs[:, 2] / hubs[:, 2].sum())
                px, py = hx[h] + rng.normal(0, 150e3), hy[h] + rng.normal(0, 150e3)
                cx = int(np.argmin(np.abs(x - px)))
                cy = int(np.argmin(np.abs(y - py)))
                if w.mask[cy, cx] and abs(x[cx] - px) <= res / 2 and abs(y[cy] - py) <= res / 2:
                    break
            else:
                raise RuntimeError("could not place a site on domain land near its hub")
        px = x[cx] + rng.uniform(-0.45, 0.45) * res
        py = y[cy] + rng.uniform(-0.45, 0.45) * res
        lon, lat = to_ll.transform(px, py)
        rows.append(
            dict(site=i, iy=cy, ix=cx, lat=round(lat, 5), lon=round(lon, 5), fire_year=fire_year, fire_month=fire_month)
        )
    return pd.DataFrame(rows)


def _site_calendar(rng, n, first, last, fire_year=np.nan):
    """(years, months) of a site record within [first, last], and its method."""
    ec = rng.random() < (0.8 if n >= 24 else 0.35)
    y_lo = first if np.isnan(fire_year) else max(first, int(fire_year) + 1)
    if not ec:  # chamber campaigns: May-Sep of consecutive years
        n = min(n, 5 * (last - y_lo + 1))
        idx = np.arange(n)
        ny = idx[-1] // 5 + 1
        y0 = int(rng.integers(y_lo, last - ny + 2))
        return y0 + idx // 5, 5 + idx % 5, "chamber"
    n = min(n, 12 * (last - y_lo + 1))
    k0 = int(rng.integers(0, 12 * (last - y_lo + 1) - n + 1))
    k = k0 + np.arange(n)
    return y_lo + k // 12, k % 12 + 1, "EC"


# --------------------------------------------------------------------------- writer
#: Months are generated and written in blocks of at most this many bytes of float32 grids (and
#: at most a year): bounded memory on big grids, few appends on small ones.
WRITE_BLOCK_BYTES = 256 * 2**20


def make_twin(
    out: str | Path,
    spec: TwinSpec = TwinSpec(),
    progress=None,
    coarse: TwinSpec | None = None,
    network: pd.DataFrame | None = None,
) -> dict:
    """Generate a twin into directory ``out`` (created; must not exist or be empty).

    Files: ``sites.csv``, ``predictors.zarr``, ``zones.nc``, ``fire.zarr``, ``truth.nc``,
    ``truth_budgets.csv``, ``twin.json`` and ``config.toml`` (ready for ``abzflux run``).
    Everything is written into a temporary sibling directory and renamed at the end, so a
    failure leaves no partial twin. Returns the summary written to ``twin.json``.

    ``coarse``: a second twin for the coarse model set (e.g. a coarser grid over 1990-2016),
    written to ``out/coarse`` with its own sites, predictors and truth, and referenced by a
    ``[coarse]`` section of ``config.toml``.

    ``network``: a site table in the contract (docs/formats.md §1; e.g. the real ABCflux network,
    :func:`abzflux.twin_network.read_network`) whose sites, months, methods and disturbance labels
    replace the synthetic network (in both model sets), by the rules of
    :mod:`abzflux.twin_network`; its ``attrs["source"]`` names it in messages and ``twin.json``
    (key ``network``). The world (predictors, truth, fire) is the synthetic twin's of the same
    spec. Without it the synthetic network is written, unchanged.
    """
    if network is not None:
        source = network.attrs.get("source", "<network table>")
        network = check_network(network, source)
        network.attrs["source"] = source
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: directory exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        summary = _write_twin(tmp, spec, progress, network)
        if coarse is not None:
            (tmp / "coarse").mkdir()
            summary["coarse"] = _write_twin(tmp / "coarse", coarse, progress, network)
            (tmp / "coarse" / "config.toml").unlink()
            (tmp / "twin.json").write_text(json.dumps(summary, indent=2))
            with open(tmp / "config.toml", "a") as fh:
                refs = ", ".join(f'"coarse/{r["file"]}"' for r in summary["coarse"]["references"])
                fh.write(COARSE_TOML.format(years=f"{coarse.first_year}-{coarse.last_year}", refs=refs))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _coords(w: _World, times=None):
    c = {
        "y": ("y", w.dom.y.values, {"units": "m", "standard_name": "projection_y_coordinate", "axis": "Y"}),
        "x": ("x", w.dom.x.values, {"units": "m", "standard_name": "projection_x_coordinate", "axis": "X"}),
    }
    if times is not None:
        c["time"] = ("time", times, {"standard_name": "time"})
    return c


def _write_block(tmp: Path, w: _World, crs, times, dyn: dict, tru: dict, fe, bfr, first: bool):
    """Append a block of months (time, y, x) to predictors.zarr, truth.zarr and fire.zarr, which
    the first block creates, with the static predictors. Chunks are one month of the whole grid,
    the time coordinate's 12 months (as when the stores were written a year at a time)."""
    pred = xr.Dataset(coords=_coords(w, times))
    for v, a in dyn.items():
        pr = BY_NAME[v]
        pred[v] = (("time", "y", "x"), a, {"units": pr.units, "long_name": pr.long_name})
    if first:
        pr = BY_NAME["veg_type"]
        codes = np.array(sorted(VEG_CLASSES), np.int16)
        pred["veg_type"] = (
            ("y", "x"),
            np.where(w.mask, w.veg, -1).astype(np.int16),
            {"flag_values": codes, "flag_meanings": " ".join(VEG_CLASSES[c] for c in codes), "long_name": pr.long_name},
        )
        pred["veg_type"].encoding["_FillValue"] = np.int16(-1)
        for v, arr in (("cti", w.cti), ("soil_ph", w.soil_ph), ("soc_stock", w.soc), ("permafrost_prob", w.pf_prob)):
            pr = BY_NAME[v]
            pred[v] = (
                ("y", "x"),
                np.where(w.mask, arr, np.nan).astype(np.float32),
                {"units": pr.units, "long_name": pr.long_name},
            )
        pred["lst"].attrs["long_name"] = "land surface temperature (twin)"
    pred = write_crs(pred, crs)
    truth = write_crs(
        xr.Dataset(
            {v: (("time", "y", "x"), a, {"units": FLUX_UNITS}) for v, a in tru.items()}, coords=_coords(w, times)
        ),
        crs,
    )
    fire = write_crs(
        xr.Dataset(
            {
                "fire_emissions": (("time", "y", "x"), fe, {"units": FLUX_UNITS}),
                "burned_fraction": (("time", "y", "x"), bfr, {"units": "1"}),
            },
            coords=_coords(w, times),
        ),
        crs,
    )
    chunk = {
        "time": 12,
        "y": w.shape[0],
        "x": w.shape[1],
    }  # a year per chunk: the unit the stores are written and read in
    for ds, name in ((pred, "predictors.zarr"), (truth, "truth.zarr"), (fire, "fire.zarr")):
        ds = ds.chunk(chunk)
        if first:
            ds.to_zarr(tmp / name, mode="w", consolidated=False, encoding={"time": {"chunks": (12,)}})
        else:
            ds.drop_vars(
                [v for v in ds.data_vars if "time" not in ds[v].dims] + ["spatial_ref"], errors="ignore"
            ).to_zarr(tmp / name, append_dim="time", consolidated=False)


def _site_truth(rec: pd.DataFrame, year: int, m: int, p: dict, legacy: np.ndarray, burn_scar: bool = True):
    """Fill ``gpp_t``/``reco_t`` of the site records of one month from that month's fields.
    ``burn_scar=False`` (centred twins): burn-scar sites observe their cell like the others."""
    sel = np.nonzero((rec.year.values == year) & (rec.month.values == m))[0]
    if not sel.size:
        return
    iy, ix = rec.iy.values[sel], rec.ix.values[sel]
    site_p = {k: (v[iy, ix] if np.ndim(v) == 2 else v) for k, v in p.items()}
    # Burn-scar sites sit inside the burn (burned fraction 1), unlike their cell.
    leg = legacy[iy, ix].copy()
    fy = rec.fire_year.values[sel]
    burned = ~np.isnan(fy) & burn_scar
    if burned.any():
        age = year + (m - 0.5) / 12 - (fy[burned] + (rec.fire_month.values[sel][burned] - 0.5) / 12)
        leg[burned] = fire_legacy(age) * LEGACY_SEASON[m - 1]
        site_p["ndvi"] = site_p["ndvi"].copy()
        site_p["ndvi"][burned] *= 1.0 - 0.5 * np.exp(-age / 4.0)
    sf = true_fluxes(site_p, leg, m)
    rec.loc[rec.index[sel], "gpp_t"] = sf["gpp"]
    rec.loc[rec.index[sel], "reco_t"] = sf["reco"]


def _site_effect_cov() -> list:
    """Covariance of the log site-effect factors of GPP and Reco."""
    sg, sr = SITE_EFFECT_SD
    return [[sg**2, SITE_EFFECT_R * sg * sr], [SITE_EFFECT_R * sg * sr, sr**2]]


def _check_site_effects(mode: str) -> None:
    if mode not in SITE_EFFECTS:
        raise ValueError(f"site_effects must be one of {list(SITE_EFFECTS)}, got {mode!r}")


def _site_effect_mean(mode: str) -> list:
    """Mean of the log site-effect factors: 0 (biased: the factors' mean is e^(σ²/2) > 1) or
    −σ²/2 (centred: mean exactly 1)."""
    return [0.0, 0.0] if mode == "biased" else [-(sd**2) / 2 for sd in SITE_EFFECT_SD]


def _observe(rng, rec: pd.DataFrame, re_g, re_r, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed GPP, Reco and NEE of the site-months ``rec`` (truth ``gpp_t``/``reco_t``) with
    log site effects ``re_g``/``re_r`` (per row, disturbance effects included): factor, offset
    (biased only) and multiplicative measurement noise (mean 1 when centred); NEE = Reco − GPP
    + N(0, NEE_NOISE_SD). The same random draws in either mode."""
    n = len(rec)
    off = SITE_OFFSET if mode == "biased" else 0.0
    mu = 0.0 if mode == "biased" else -(MEASUREMENT_SD**2) / 2
    gpp = (rec.gpp_t.values * np.exp(re_g) + off) * np.exp(rng.normal(mu, MEASUREMENT_SD, n))
    reco = (rec.reco_t.values * np.exp(re_r) + off) * np.exp(rng.normal(mu, MEASUREMENT_SD, n))
    nee = reco - gpp + rng.normal(0, NEE_NOISE_SD, n)
    return gpp, reco, nee


def _network_records(placement: NetworkPlacement) -> pd.DataFrame:
    """Site-month records of a placed network, in the shape the monthly loop fills
    (:func:`_site_truth`): a fire site's ``fire_year`` is the decimal year of its fire in the
    twin's years and ``fire_month`` 0.5, so that the age there is the row's years since fire."""
    r = placement.records.merge(placement.sites[["site", "iy", "ix", "lat", "lon"]], on="site", how="left")
    return r.assign(fire_year=r.fire_time.to_numpy(np.float64), fire_month=0.5)


def _network_site_table(
    rng, rec: pd.DataFrame, placement: NetworkPlacement, mode: str = "biased"
) -> tuple[pd.DataFrame, np.ndarray]:
    """A placed network's site table: the truth at its cells and months with the synthetic
    network's observation model (site effects, disturbance effects by label, measurement noise);
    each flux present where the network has it; the network's ids, locations, methods,
    disturbance labels and years since fire. Returns the table and each site's label (``fire``
    where any of its rows is fire-labelled, else its first label)."""
    n_s = len(placement.sites)
    re = rng.multivariate_normal(_site_effect_mean(mode), _site_effect_cov(), size=n_s)
    site = rec.site.to_numpy()
    k = rec.disturbance.to_numpy(object).astype(str)
    dist = mode == "biased"
    r_g = re[site, 0] + np.where(dist & np.isin(k, HARVEST_LABELS), HARVEST_GPP_EFFECT, 0.0)
    r_r = re[site, 1] + np.where(dist & np.isin(k, THAW_LABELS), THAW_RECO_EFFECT, 0.0)
    gpp, reco, nee = _observe(rng, rec, r_g, r_r, mode)
    table = pd.DataFrame(
        {
            "site_id": placement.sites.site_id.to_numpy(object)[site],
            "lat": rec.lat.values,
            "lon": rec.lon.values,
            "year": rec.year.values,
            "month": rec.month.values,
            "gpp": np.where(rec.has_gpp.values, gpp, np.nan).round(3),
            "reco": np.where(rec.has_reco.values, reco, np.nan).round(3),
            "nee": np.where(rec.has_nee.values, nee, np.nan).round(3),
            "method": rec.method.values,
            "disturbance": np.where(k == "none", "", k),
            "years_since_fire": rec.years_since_fire.values,
        }
    ).sort_values(["site_id", "year", "month"], kind="mergesort")
    first = pd.Series(k).groupby(site).first()
    fire = pd.Series(k == "fire").groupby(site).any()
    kind = np.where(fire.to_numpy(), "fire", first.to_numpy(object))
    return table, kind


def _synthetic_site_table(
    rng, rec: pd.DataFrame, sites: pd.DataFrame, mode: str = "biased"
) -> tuple[pd.DataFrame, np.ndarray]:
    """The synthetic network's site table: truth at the site, site effects, noise, gaps."""
    n_s = len(sites)
    re = rng.multivariate_normal(_site_effect_mean(mode), _site_effect_cov(), size=n_s)
    kind = rng.choice(["none", "harvest", "thermokarst"], p=[0.9, 0.05, 0.05], size=n_s)
    kind = np.where(~np.isnan(sites.fire_year.values), "fire", kind)
    nee_only = rng.random(n_s) < 0.22
    r_g, r_r = re[rec.site.values, 0], re[rec.site.values, 1]
    k = kind[rec.site.values]
    if mode == "biased":
        r_r = r_r + np.where(k == "thermokarst", THAW_RECO_EFFECT, 0.0)
        r_g = r_g + np.where(k == "harvest", HARVEST_GPP_EFFECT, 0.0)
    n = len(rec)
    gpp, reco, nee = _observe(rng, rec, r_g, r_r, mode)
    drop_parts = nee_only[rec.site.values] | (rng.random(n) < 0.05)
    table = pd.DataFrame(
        {
            "site_id": [f"TW{s + 1:03d}" for s in rec.site.values],
            "lat": rec.lat.values,
            "lon": rec.lon.values,
            "year": rec.year.values,
            "month": rec.month.values,
            "gpp": np.where(drop_parts, np.nan, gpp).round(3),
            "reco": np.where(drop_parts, np.nan, reco).round(3),
            "nee": nee.round(3),
            "method": rec.method.values,
            "disturbance": np.where(k == "none", "", k),
            "years_since_fire": np.where(
                k == "fire",
                (
                    rec.year.values
                    + (rec.month.values - 0.5) / 12
                    - rec.fire_year.values
                    - (rec.fire_month.values - 0.5) / 12
                ).round(3),
                np.nan,
            ),
        }
    ).sort_values(["site_id", "year", "month"], kind="mergesort")
    return table, kind


def _write_twin(tmp: Path, spec: TwinSpec, progress, network: pd.DataFrame | None = None) -> dict:
    _check_site_effects(spec.site_effects)
    w = _World(spec)
    rng = w.rng
    crs = CRS.from_epsg(CRS_EPSG)
    years = np.arange(spec.first_year, spec.last_year + 1)
    nan_out = ~w.mask

    # ---- zones
    zones = xr.Dataset(coords=_coords(w))
    zones["land_fraction"] = (
        ("y", "x"),
        w.dom.land_fraction.values.astype(np.float32),
        {"units": "1", "long_name": "domain land fraction (lakes, ice excluded)"},
    )
    zones["biome"] = (
        ("y", "x"),
        w.biome.astype(np.int8),
        {
            "flag_values": np.array([1, 2], np.int8),
            "flag_meanings": " ".join(BIOMES),
            "long_name": "biome (0 = outside)",
        },
    )
    zones["region"] = (
        ("y", "x"),
        w.region.astype(np.int8),
        {
            "flag_values": np.arange(1, 5, dtype=np.int8),
            "flag_meanings": " ".join(REGIONS),
            "long_name": "region (0 = outside)",
        },
    )
    for v in ("biome", "region"):  # 0 = outside the domain, decoded as missing
        zones[v].encoding["_FillValue"] = np.int8(0)
    zones["permafrost"] = (
        ("y", "x"),
        np.where(w.mask, w.permafrost, 0).astype(np.float32),
        {"units": "1", "long_name": "permafrost region mask"},
    )
    zones["cell_area"] = (("y", "x"), w.dom.cell_area.values.astype(np.float64), {"units": "m2"})
    zones = write_crs(zones, crs)
    zones.attrs.update(title="abzflux twin zones", Conventions="CF-1.8")
    zones.to_netcdf(tmp / "zones.nc", engine="h5netcdf")

    # ---- sites (cells and calendars first, so the monthly loop can sample the truth there)
    sites = _place_sites(w, rng)
    lengths = _record_lengths(rng, spec.n_sites, spec.n_site_months, 213)
    recs = []
    for s, n in zip(sites.itertuples(), lengths):
        yrs, mons, method = _site_calendar(rng, int(n), spec.first_year, spec.last_year, s.fire_year)
        recs.append(pd.DataFrame({"site": s.site, "year": yrs, "month": mons, "method": method}))
    rec = pd.concat(recs, ignore_index=True).merge(sites, on="site")
    placement = None
    if network is not None:
        # The synthetic sites above are drawn and discarded, so that the world (weather,
        # predictors, truth, fire) is the synthetic twin's of the same spec: only the sites differ.
        placement = place_network(
            network, zones, spec.first_year, spec.last_year, file=str(network.attrs.get("source", "<network table>"))
        )
        rec = _network_records(placement)
    rec["gpp_t"] = rec["reco_t"] = np.nan

    # ---- monthly loop: predictors, fire and truth, appended in blocks of months: a whole year on
    # small grids (few appends: fast), fewer months on big ones so that the block's buffers stay
    # under WRITE_BLOCK_BYTES (a year was 0.8 GB at 8 km); memory does not grow with the period.
    toa = _toa_monthly(w.lat)
    noise = lambda: rng.standard_normal(w.shape)  # noqa: E731
    wx = _Weather(w, rng)
    fire_by = w.fires.groupby(["year", "month"])
    static = ("veg_type", "cti", "soil_ph", "soc_stock", "permafrost_prob")
    dyn_vars = [v for v in STACK_VARIABLES if v not in static]
    month_bytes = w.mask.size * 4 * (len(dyn_vars) + 5)  # float32: predictors, 3 fluxes, 2 fire grids
    block = int(np.clip(WRITE_BLOCK_BYTES // month_bytes, 1, 12))
    for yi, year in enumerate(years):
        times = pd.date_range(f"{year}-01-01", periods=12, freq="MS")
        for m0 in range(1, 13, block):
            months = range(m0, min(m0 + block, 13))
            n = len(months)
            dyn = {v: np.empty((n, *w.shape), np.float32) for v in dyn_vars}
            tru = {v: np.empty((n, *w.shape), np.float32) for v in ("gpp", "reco", "nee")}
            fe = np.zeros((n, *w.shape), np.float32)
            bfr = np.zeros((n, *w.shape), np.float32)
            for i, m in enumerate(months):
                p, legacy, _ = predictors_for_month(w, wx, int(year), m, toa, noise)
                fl = true_fluxes(p, legacy, m)
                for v in dyn:
                    dyn[v][i] = np.where(nan_out, np.nan, p[v])
                for v in tru:
                    tru[v][i] = np.where(nan_out, np.nan, fl[v])
                if (year, m) in fire_by.groups:
                    ev = fire_by.get_group((year, m))
                    np.add.at(fe[i], (ev.iy.values, ev.ix.values), ev.emission.values)
                    np.add.at(bfr[i], (ev.iy.values, ev.ix.values), ev.bf.values)
                _site_truth(rec, int(year), m, p, legacy, burn_scar=spec.site_effects == "biased")
                del p, fl, legacy
            fe[:, nan_out] = np.nan
            bfr = np.clip(bfr, 0, 1, out=bfr)
            bfr[:, nan_out] = np.nan
            _write_block(tmp, w, crs, times[m0 - 1 : m0 - 1 + n], dyn, tru, fe, bfr, first=(yi == 0 and m0 == 1))
            del dyn, tru, fe, bfr
        if progress:
            progress(yi + 1, len(years))

    # ---- truth as NetCDF (streamed from the zarr written above), and its budgets
    tz = xr.open_zarr(tmp / "truth.zarr", consolidated=False)
    tz.attrs.update(title="abzflux twin: true monthly fluxes", Conventions="CF-1.8")
    tz.to_netcdf(tmp / "truth.nc", engine="h5netcdf")
    shutil.rmtree(tmp / "truth.zarr")
    truth = xr.open_dataset(tmp / "truth.nc", engine="h5netcdf", chunks={"time": 12})
    fire = xr.open_zarr(tmp / "fire.zarr", consolidated=False)
    tb = budgets_mod.annual_budgets(truth[["gpp", "reco", "nee"]], zones, fire=fire)
    tb.to_csv(tmp / "truth_budgets.csv", index=False)
    truth.close()

    # ---- the site table: truth at the site, site effects, noise, gaps
    if placement is not None:
        table, kind = _network_site_table(rng, rec, placement, spec.site_effects)
    else:
        table, kind = _synthetic_site_table(rng, rec, sites, spec.site_effects)
    table.to_csv(tmp / "sites.csv", index=False)

    area = float((zones.land_fraction * zones.cell_area).sum()) / 1e6
    summary = {
        "spec": asdict(spec),
        "domain_area_km2": area,
        "grid": {"ny": int(w.shape[0]), "nx": int(w.shape[1]), "land_cells": int(w.mask.sum())},
        "sites": int(table.site_id.nunique()),
        "site_months": int(len(table)),
        "rows_with": {f: int(table[f].notna().sum()) for f in ("gpp", "reco", "nee")},
        "fire_sites": int((kind == "fire").sum()),
        "truth_period_mean_tg": _period_means(tb),
    }
    if placement is not None:
        summary["network"] = placement.report
    summary["references"] = _write_references(tmp, spec, w, zones)
    (tmp / "twin.json").write_text(json.dumps(summary, indent=2))
    (tmp / "config.toml").write_text(default_config_toml(spec, [r["file"] for r in summary["references"]]))
    return summary


#: The inversion-like product: net uptake scaled by this factor (inversions show 1.5-3x more).
INVERSION_UPTAKE_FACTOR = 1.5
#: Its lat/lon resolution (degrees) and the process-model-like product's years.
INVERSION_RES_DEG = 2.0
PROCESS_YEARS = (2001, 2014)


def _write_references(tmp: Path, spec: TwinSpec, w: _World, zones: xr.Dataset) -> list:
    """Two reference products made from the truth, for comparisons (docs/compare.md):

    * ``ref_inversion.nc``: an inversion-like product on a regular 2-degree lat/lon grid: the
      land-area-weighted mean of the true NEE over each lat/lon cell times
      :data:`INVERSION_UPTAKE_FACTOR`, plus the fire emissions likewise aggregated (global
      attribute ``fire_included = 1``), plus N(0, 1) noise per cell and month;
    * ``ref_process.nc``: a process-model-like product on the analysis grid over
      :data:`PROCESS_YEARS`: the true NEE times a smooth static factor 1 + 0.3 z (z a smooth
      standard field), plus N(0, 3) noise.

    Drawn from their own generator, after everything else, so the other twin files do not
    change."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 8]))
    crs = CRS.from_epsg(CRS_EPSG)
    truth = xr.open_dataset(tmp / "truth.nc", engine="h5netcdf")
    fire = xr.open_zarr(tmp / "fire.zarr", consolidated=False)
    years = np.arange(spec.first_year, spec.last_year + 1)
    out = []
    # --- inversion-like, lat/lon
    res = INVERSION_RES_DEG
    lat_c = np.arange(30 + res / 2, 90, res)
    lon_c = np.arange(-180 + res / 2, 180, res)
    iy = np.clip(np.floor((w.lat - 30) / res).astype(int), 0, lat_c.size - 1)
    ix = np.clip(np.floor((np.mod(w.lon + 180, 360)) / res).astype(int), 0, lon_c.size - 1)
    area = (zones.land_fraction.fillna(0) * zones.cell_area).values.astype(np.float64)
    ok = w.mask & (area > 0) & (w.lat >= 30)
    j = (iy * lon_c.size + ix)[ok]
    a = area[ok]
    wsum = np.bincount(j, weights=a, minlength=lat_c.size * lon_c.size)
    times = pd.DatetimeIndex(truth.time.values)
    nee = np.full((times.size, lat_c.size * lon_c.size), np.nan, np.float32)
    for t in range(times.size):
        tn = np.nan_to_num(truth.nee.isel(time=t).values.astype(np.float64)[ok])
        fe = np.nan_to_num(fire.fire_emissions.isel(time=t).values.astype(np.float64)[ok])
        num = np.bincount(j, weights=a * (INVERSION_UPTAKE_FACTOR * tn + fe), minlength=wsum.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            nee[t] = np.where(wsum > 0, num / wsum, np.nan)
    nee = nee + np.where(np.isfinite(nee), rng.normal(0, 1.0, nee.shape), np.nan).astype(np.float32)
    ds = xr.Dataset(
        {"nee": (("time", "lat", "lon"), nee.reshape(times.size, lat_c.size, lon_c.size), {"units": FLUX_UNITS})},
        coords={
            "time": times,
            "lat": ("lat", lat_c, {"units": "degrees_north"}),
            "lon": ("lon", lon_c, {"units": "degrees_east"}),
        },
        attrs={
            "product": "twin inversion-like",
            "fire_included": 1,
            "uptake_factor": INVERSION_UPTAKE_FACTOR,
            "comment": f"twin truth NEE x {INVERSION_UPTAKE_FACTOR} + fire emissions on a {res:g}-degree "
            "grid (land-area-weighted means), + N(0, 1) noise",
        },
    )
    ds.to_netcdf(tmp / "ref_inversion.nc", engine="h5netcdf")
    out.append({"file": "ref_inversion.nc", "product": ds.attrs["product"], "years": [int(years[0]), int(years[-1])]})
    # --- process-model-like, analysis grid, shorter period
    p0, p1 = max(PROCESS_YEARS[0], spec.first_year), min(PROCESS_YEARS[1], spec.last_year)
    if p0 <= p1:
        z = _smooth(rng, w.shape, 1500, w.res_km)
        factor = 1 + 0.3 * z / max(float(z[w.mask].std()), 1e-12)
        tsel = (times.year >= p0) & (times.year <= p1)
        sel = np.nonzero(tsel)[0]
        # The file is defined by xarray (NaN placeholder, streamed in time steps), then filled one
        # month at a time: the noise is drawn month after month, the same stream as one draw of
        # the whole (time, y, x) block, and memory stays at a few grids for any period.
        holder = dask_array.full((sel.size, *w.shape), np.nan, dtype=np.float32, chunks=(1, *w.shape))
        ds = write_crs(
            xr.Dataset({"nee": (("time", "y", "x"), holder, {"units": FLUX_UNITS})}, coords=_coords(w, times[tsel])),
            crs,
        )
        ds.attrs.update(
            product="twin process-model-like",
            fire_included=0,
            comment="twin truth NEE x (1 + 0.3 smooth static field) + N(0, 3) noise",
        )
        ds.to_netcdf(tmp / "ref_process.nc", engine="h5netcdf", encoding={"nee": {"chunksizes": None}})
        with h5netcdf.File(tmp / "ref_process.nc", "a") as fh:
            var = fh.variables["nee"]
            for k, t in enumerate(sel):
                tn = truth.nee.isel(time=int(t)).values.astype(np.float64)
                pn = tn * factor + rng.normal(0, 3.0, tn.shape)
                var[k] = np.where(np.isfinite(tn), pn, np.nan).astype(np.float32)
        out.append({"file": "ref_process.nc", "product": ds.attrs["product"], "years": [int(p0), int(p1)]})
    truth.close()
    return out


def _period_means(tb: pd.DataFrame) -> dict:
    m = tb.groupby(["zone", "flux"]).tg_c.mean()
    return {f"{z}/{f}": round(float(v), 3) for (z, f), v in m.items()}


COARSE_TOML = """
[coarse]
# The coarse model set (the paper's 8 km, 1990-2016): its own twin, outputs in RUN/coarse.
sites = "coarse/sites.csv"
predictors = "coarse/predictors.zarr"
zones = "coarse/zones.nc"
fire = "coarse/fire.zarr"
truth = "coarse/truth.nc"
references = [{refs}]
years = "{years}"
"""


def default_config_toml(spec: TwinSpec, references: list | None = None) -> str:
    """A run configuration for a twin directory (paths relative to the config file).

    Forest settings are sized for a quick study on a laptop; the paper's settings (abzflux's
    defaults) are in the comments.
    """
    refs = (
        "references = [" + ", ".join(f'"{r}"' for r in references) + "]  # compared in RUN/compare\n"
        if references
        else ""
    )
    return f"""# abzflux run configuration for a twin generated with seed {spec.seed}
[inputs]
sites = "sites.csv"
predictors = "predictors.zarr"
zones = "zones.nc"
fire = "fire.zarr"
truth = "truth.nc"
{refs}
[run]
seed = {spec.seed}
years = "{spec.first_year}-{spec.last_year}"

[forest]
# Sized for a demo of a few minutes on 2 cores: 100 trees and a fixed mtry (leave-one-site-out
# CV still runs, for skill) and 10 bootstrap forests. The paper's settings are abzflux's
# defaults: delete these lines (500 trees; mtry tuned by leave-one-site-out CV over [2, 9, 17];
# 100 importance repeats on all rows; 20 bootstrap forests).
n_estimators = 100
mtry = 5
importance_repeats = 10
pdp_rows = 500
n_bootstrap = 10
"""
