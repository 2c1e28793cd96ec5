"""Centred twins (``TwinSpec.site_effects = "centred"``): the site observations are unbiased
observations of their cell's truth, unlike the default (biased) twin's (docs/twin.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import Transformer

from abzflux import twin as twin_mod
from abzflux.domain import CRS_EPSG
from abzflux.twin import MEASUREMENT_SD, SITE_EFFECT_SD, TwinSpec, make_twin


def _observed_over_true(mode: str, n_sites=4000, rows_per_site=20, seed=3):
    """Mean observed / true GPP and Reco of many site-months of one constant true flux."""
    rng = np.random.default_rng(seed)
    re = rng.multivariate_normal(twin_mod._site_effect_mean(mode), twin_mod._site_effect_cov(), size=n_sites)
    site = np.repeat(np.arange(n_sites), rows_per_site)
    rec = pd.DataFrame({"gpp_t": np.full(site.size, 50.0), "reco_t": np.full(site.size, 40.0)})
    gpp, reco, nee = twin_mod._observe(rng, rec, re[site, 0], re[site, 1], mode)
    return gpp.mean() / 50.0, reco.mean() / 40.0, nee.mean() - (40.0 - 50.0)


def test_observation_factors_have_mean_one_when_centred():
    # centred: E[e^(r − σ²/2)] E[e^(ε − s²/2)] = 1, no offset
    g, r, n = _observed_over_true("centred")
    assert g == pytest.approx(1.0, abs=0.01) and r == pytest.approx(1.0, abs=0.01)
    assert n == pytest.approx(0.0, abs=0.4)
    # biased (the default): E[e^r] E[e^ε] = e^((σ² + s²)/2), plus the 0.2 offset
    g, r, n = _observed_over_true("biased")
    sg, sr = SITE_EFFECT_SD
    assert g == pytest.approx(
        np.exp((sg**2 + MEASUREMENT_SD**2) / 2) + 0.2 / 50 * np.exp(MEASUREMENT_SD**2 / 2), abs=0.01
    )
    assert r == pytest.approx(
        np.exp((sr**2 + MEASUREMENT_SD**2) / 2) + 0.2 / 40 * np.exp(MEASUREMENT_SD**2 / 2), abs=0.01
    )
    assert r > 1.03


def test_unknown_site_effects_is_refused(tmp_path):
    with pytest.raises(ValueError, match="site_effects"):
        make_twin(tmp_path / "x", TwinSpec(resolution_km=200, first_year=2020, last_year=2020, site_effects="mean0"))
    assert not any(tmp_path.iterdir())  # no partial twin


def _errors(d) -> pd.DataFrame:
    """Observed − true (the truth of the site's cell and month) per site-month and flux."""
    s = pd.read_csv(d / "sites.csv")
    t = xr.open_dataset(d / "truth.nc")
    x, y = Transformer.from_crs(4326, CRS_EPSG, always_xy=True).transform(s.lon.to_numpy(), s.lat.to_numpy())
    ix = np.abs(t.x.values[None] - x[:, None]).argmin(1)
    iy = np.abs(t.y.values[None] - y[:, None]).argmin(1)
    it = pd.Index(t.time.values).get_indexer(pd.to_datetime(dict(year=s.year, month=s.month, day=1)))
    out = s[["site_id", "year", "month"]].copy()
    for f in ("gpp", "reco", "nee"):
        out[f] = s[f].to_numpy() - t[f].values[it, iy, ix]
    t.close()
    return out


@pytest.mark.slow  # builds two twins
def test_centred_twin_observes_its_truth_without_bias(tmp_path):
    kw = dict(resolution_km=200, first_year=2019, last_year=2020, seed=5, n_sites=300, n_site_months=1500)
    make_twin(tmp_path / "b", TwinSpec(**kw))
    make_twin(tmp_path / "c", TwinSpec(**kw, site_effects="centred"))
    import json

    assert json.loads((tmp_path / "c" / "twin.json").read_text())["spec"]["site_effects"] == "centred"
    b, c = _errors(tmp_path / "b"), _errors(tmp_path / "c")
    # same world, same sites and months (paired): only the observation model differs
    assert (b[["site_id", "year", "month"]].to_numpy() == c[["site_id", "year", "month"]].to_numpy()).all()
    for f in ("gpp", "reco", "nee"):
        ok = c[f].notna()
        site_means = c[ok].groupby("site_id")[f].mean()
        se = site_means.std() / np.sqrt(len(site_means))  # site effects: sites are the independent units
        assert abs(c.loc[ok, f].mean()) < 3 * se, f
    # biased: the same draws shifted up — Reco and NEE clearly above the centred twin's
    for f in ("reco", "nee"):
        d = (b[f] - c[f]).dropna()
        assert d.mean() > 1.0 and d.mean() > 10 * d.std() / np.sqrt(len(d)), f
