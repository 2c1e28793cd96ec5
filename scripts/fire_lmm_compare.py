"""abzflux.lmm next to R (lme4 + lmerTest) on a stored residual table (docs/fire.md).

    PYTHONPATH=src python scripts/fire_lmm_compare.py table RESID.csv R.csv      # markdown table
    PYTHONPATH=src python scripts/fire_lmm_compare.py agreement RESID.csv R.csv  # largest differences
    PYTHONPATH=src python scripts/fire_lmm_compare.py steps RESID.csv MONTH      # df vs Hessian step

RESID.csv: site_id, month, years_since_fire, residual; R.csv: scripts/fire_lmm_r.R's output.
Rows with 0 <= years_since_fire <= 18 are fitted, as in R.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from abzflux import lmm

MAX_YSF = 18.0


def _fits(resid: str) -> dict:
    d = pd.read_csv(resid)
    d = d[(d.years_since_fire >= 0) & (d.years_since_fire <= MAX_YSF)]
    return {int(m): (g, lmm.lmer_slope(g, "residual", "years_since_fire", "site_id")) for m, g in d.groupby("month")}


def table(resid: str, r_csv: str) -> None:
    r = pd.read_csv(r_csv)
    print(
        "| month | term | estimate abzflux / R | SE abzflux / R | df abzflux / R | p abzflux / R | singular | REML crit. abzflux / R |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m, (_, f) in _fits(resid).items():
        rr = r[r.month == m].set_index("term")
        for j, term in enumerate(f.names):
            x = rr.loc[term]
            sing = f"{'yes' if f.singular else 'no'} / {'yes' if x.singular else 'no'}"
            crit = f"{f.reml:.4f} / {x.reml:.4f}" if j == 0 else ""
            print(
                f"| {m} | {'intercept' if j == 0 else 'slope'} | {f.beta[j]:.5g} / {x.estimate:.5g} "
                f"| {f.se[j]:.4g} / {x.se:.4g} | {f.df[j]:.4g} / {x.df:.4g} | {f.p[j]:.4f} / {x.p:.4f} | {sing} | {crit} |"
            )


def agreement(resid: str, r_csv: str) -> None:
    r = pd.read_csv(r_csv)
    out, worse = [], []
    for m, (_, f) in _fits(resid).items():
        rr = r[r.month == m].set_index("term")
        if rr.reml.iloc[0] > f.reml + 1e-5:
            worse.append((m, round(float(rr.reml.iloc[0] - f.reml), 4)))
            continue
        assert bool(rr.singular.iloc[0]) == f.singular, m
        for j, term in enumerate(f.names):
            x = rr.loc[term]
            out.append(
                (abs(f.beta[j] / x.estimate - 1), abs(f.se[j] / x.se - 1), abs(f.df[j] / x.df - 1), abs(f.p[j] - x.p))
            )
    a = np.array(out).max(axis=0)
    e, se, df, p = a
    print(f"largest relative difference: estimate {e:.1e}, SE {se:.1e}, df {df:.1e}; largest |p difference| {p:.1e}")
    print("months where R stopped at a higher REML criterion (month, excess):", worse)


def steps(resid: str, month: str) -> None:
    g, f = _fits(resid)[int(month)]
    X = np.column_stack([np.ones(len(g)), g.years_since_fire.to_numpy(dtype=float)])
    y, site = g.residual.to_numpy(dtype=float), g.site_id.to_numpy()
    for d in (0.1, 0.03, 0.01, 0.001, 1e-4):
        df = lmm.satterthwaite_df(y, X, X, site, f.theta, f.sigma, d=d)
        print(f"Hessian step {d:g} x |parameter|: df", [round(float(v), 3) for v in df])


if __name__ == "__main__":
    {"table": table, "agreement": agreement, "steps": steps}[sys.argv[1]](*sys.argv[2:4])
