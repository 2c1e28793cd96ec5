"""The seeded simulated residual table of tests/data/fire_lmm/ (README there):
python scripts/fire_lmm_simulate.py  # rewrites tests/data/fire_lmm/simulated_residuals.csv
"""

import numpy as np
import pandas as pd

rng = np.random.default_rng(20250523)
rows = []
# month: (sites, sd_int, sd_slope, corr, sigma, b0, b1)
spec = {
    1: (12, 8, 0.8, -0.4, 4, 2.0, -0.1),
    2: (15, 10, 1.0, 0.3, 5, 12.0, -1.2),
    3: (10, 6, 0.0, 0, 10, 5.0, -0.6),
    4: (18, 12, 1.5, -0.6, 15, 15.0, -1.5),
    5: (8, 0, 0.0, 0, 8, 1.0, 0.2),
    6: (20, 5, 0.5, 0.0, 20, 20.0, -2.0),
    7: (14, 15, 1.2, -0.5, 6, 18.0, -1.6),
    8: (2, 5, 0.5, 0, 5, 1.0, 0.0),
}
for m, (ns, si, ss, c, sg, b0, b1) in spec.items():
    cov = np.array([[si**2, c * si * ss], [c * si * ss, ss**2]])
    for s in range(ns):
        u = rng.multivariate_normal([0, 0], cov) if (si > 0 or ss > 0) else np.zeros(2)
        start = rng.uniform(0, 16)
        k = rng.integers(3, 9) if m not in (1, 2, 7) else rng.integers(6, 13)
        # yearly visits of the month plus a few out-of-window rows (ysf > 18)
        ysf = start + np.arange(k) * rng.choice([1.0, 2.0]) + rng.choice([0, 1 / 12, 2 / 12])
        y = b0 + u[0] + (b1 + u[1]) * ysf + rng.normal(0, sg, k)
        for t, v in zip(ysf, y):
            rows.append((f"S{m:02d}_{s:02d}", m, round(t, 3), round(v, 4)))
d = pd.DataFrame(rows, columns=["site_id", "month", "years_since_fire", "residual"])
d.to_csv("tests/data/fire_lmm/simulated_residuals.csv", index=False)
