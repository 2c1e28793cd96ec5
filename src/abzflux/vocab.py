"""The study's vocabulary, declared once: the modelled fluxes, their units and the default seed.

Every module that names a flux, writes a flux unit or falls back to a seed imports it from here
(docs/architecture.md).
"""

from __future__ import annotations

#: The three modelled fluxes, in the order of every table and figure (GPP, Reco, NEE).
FLUXES: tuple[str, ...] = ("gpp", "reco", "nee")

#: Units of a monthly flux as the paper writes them: grams of carbon per square metre summed over
#: the calendar month. The site table's columns, the input contracts, figure labels and the
#: ``carbon_units`` attribute of the maps use it; it is not a CF ``units`` string (UDUNITS reads
#: "C" as coulomb and "month" as a fixed 30.44 days): see :data:`CF_FLUX_UNITS`.
FLUX_UNITS = "g C m-2 month-1"

#: How the monthly flux maps are written in the Zarr and NetCDF outputs (CF, docs/formats.md
#: "CF metadata of the outputs"): the same numbers as :data:`FLUX_UNITS`, stated as an amount
#: per unit area (``units``) accumulated over each time cell (``cell_methods``), whose calendar
#: month the time bounds give. The carbon is named in ``long_name`` and ``carbon_units``.
CF_FLUX_UNITS = "g m-2"
CF_FLUX_CELL_METHODS = "time: sum"

#: Units of a budget (a zone's annual flux).
BUDGET_UNITS = "Tg C yr-1"

#: The default ``run.seed`` (and of ``abzflux twin``/``demo``): the same seed gives identical files.
DEFAULT_SEED = 448

#: The central values a forest can predict (``[forest] central``): the mean of the trees (random
#: forest, the paper's text) or the median of one random training response per leaf (quantile
#: regression forest, the original code's caret ``"qrf"``).
CENTRALS: tuple[str, ...] = ("mean", "qrf_median")

#: How the forests are cross-validated (``[forest] cv``): exact leave-one-site-out (one forest per
#: site and mtry, the paper), grouped out-of-bag (one larger forest per mtry whose trees each leave
#: out a share of whole sites; each site predicted by the trees that never saw it), or none.
#: Old configs' ``cv = true`` / ``false`` mean "loso" / "none".
CV_MODES: tuple[str, ...] = ("loso", "site_oob", "none")
#: How reports name the held-out predictions of each mode.
CV_LABELS = {"loso": "leave-one-site-out", "site_oob": "grouped out-of-bag (site_oob)"}
#: site_oob: the fewest trees that must hold each site out (config check and run-time check).
MIN_OOB_TREES = 20

#: How the zones file's ``permafrost`` value (0-1) makes the permafrost region (``[budgets]
#: permafrost``; docs/budgets.md "Permafrost region"): a mask (a cell is in the region when its
#: value exceeds ``permafrost_threshold``) or weights (each cell counts with its value).
PERMAFROST_RULES: tuple[str, ...] = ("mask", "weighted")
#: The default (rule, threshold): every cell with any permafrost (every IPA class, the paper's region).
DEFAULT_PERMAFROST: tuple[str, float] = ("mask", 0.0)
