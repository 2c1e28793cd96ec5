"""Every path of a run directory, in one place (docs/architecture.md).

A model set's directory (the run directory, and ``coarse/`` for a ``[coarse]`` set) holds the
stage outputs, the provenance (``run.json``, ``stages/``), the ownership manifest and lock
(:mod:`abzflux.rundir`), the report and the default exports. The steps
(:mod:`abzflux.steps`), the runner, the report and the exports name them through
:class:`RunLayout` rather than by string.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Top-level names (stage outputs are declared by the steps' specs with these names).
SITES = "sites.parquet"
MODELS = "models"
CV = "cv"
INTERPRET = "interpret"
BOOTSTRAP = "bootstrap"
UNCERTAINTY = "uncertainty"
NETWORK = "network"
UPSCALED = "upscaled.zarr"
MEMBERS_MONTHLY = "budgets_members_monthly.parquet"
BUDGETS = "budgets"
BUDGETS_ANNUAL = "budgets_annual.csv"
BUDGETS_PERIOD_SD = "budgets_period_sd.csv"
TRENDS = "trends"
FIRE = "fire"
COMPARE = "compare"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
STAGES = "stages"
RUN_JSON = "run.json"
REPORT = "report"
REPORT_HTML = "report.html"
UPSCALED_NC = "upscaled.nc"
GEOTIFF = "geotiff"
UPSCALE_PARTIAL = "upscale.partial"
COARSE = "coarse"

# Files inside the stage outputs that another step or the report reads, relative to the model
# set's directory. A step writes one into its output's work directory as ``out / inner(NAME)``.
FOREST_JSON = f"{MODELS}/forest.json"
FOREST_FITTED = f"{MODELS}/fitted.parquet"
CV_PREDICTIONS = f"{CV}/predictions.parquet"
CV_SKILL = f"{CV}/skill.csv"
IMPORTANCE = f"{INTERPRET}/importance.csv"
PARTIAL_DEPENDENCE = f"{INTERPRET}/partial_dependence.csv"
BOOTSTRAP_JSON = f"{BOOTSTRAP}/bootstrap.json"
EXTRAPOLATION_JSON = f"{UNCERTAINTY}/extrapolation.json"
EXTRAPOLATION_SD = f"{UNCERTAINTY}/extrapolation_sd.zarr"
NETWORK_ERRORS = f"{NETWORK}/network_errors.parquet"
NETWORK_SUMMARY = f"{NETWORK}/network_summary.csv"
NETWORK_PERIOD = f"{NETWORK}/network_period.csv"
NETWORK_TRENDS = f"{NETWORK}/network_trends.csv"
NETWORK_JSON = f"{NETWORK}/residual_model.json"
TABLE1 = f"{BUDGETS}/table1.csv"
DECADAL_MONTHLY = f"{BUDGETS}/decadal_monthly.csv"
COVERAGE = f"{BUDGETS}/coverage.csv"
TREND_MAPS = f"{TRENDS}/trend_maps.zarr"
BUDGET_TRENDS = f"{TRENDS}/budget_trends.csv"
SITE_TRENDS = f"{TRENDS}/site_trends.csv"
SEASONAL_BUDGET_TRENDS = f"{TRENDS}/seasonal_budget_trends.csv"
DRIVER_MEANS = f"{TRENDS}/driver_means.csv"
DRIVER_TRENDS = f"{TRENDS}/driver_trends.csv"
BUDGETS_SEASONAL = f"{BUDGETS}/seasonal.csv"
BUDGETS_MONTHLY = f"{BUDGETS}/monthly.csv"
BURNED_CELLS = f"{FIRE}/burned_cells.nc"
FIRE_JSON = f"{FIRE}/fire.json"
EMISSIONS_BY_ZONE = f"{FIRE}/emissions_by_zone.csv"
BIAS_CORRECTION = f"{FIRE}/bias_correction.csv"
EXTRAPOLATION_MAPS = f"{COMPARE}/extrapolation.zarr"
MESS_AREA = f"{COMPARE}/mess_area.csv"
AOA_SD = f"{COMPARE}/aoa_sd.csv"
CLUSTERS = f"{COMPARE}/clusters.csv"
PRODUCT_MAPS = f"{COMPARE}/product_maps.zarr"
COMPARE_METRICS = f"{COMPARE}/metrics.csv"
COMPARE_BUDGETS = f"{COMPARE}/budgets.csv"
# `abzflux sensitivity` writes here by default (not a stage output; the report shows the table).
SENSITIVITY = "sensitivity"
SENSITIVITY_TABLE = f"{SENSITIVITY}/sensitivity.csv"


def inner(rel: str) -> str:
    """The name of a file inside its stage output (``"cv/skill.csv"`` -> ``"skill.csv"``)."""
    return rel.split("/", 1)[1]


# Files and directories abzflux writes into a run directory besides the stage outputs: the
# provenance, the report, the default exports and work in progress.
RUN_FILES = (RUN_JSON, REPORT_HTML, UPSCALED_NC)
RUN_DIRS = (STAGES, REPORT, GEOTIFF, UPSCALE_PARTIAL)
# Work in progress outside the stage outputs' own ``.tmp``/``.old`` names.
WORK_NAMES = ("run.json.tmp", "report.tmp", "report.old", "upscaled.nc.tmp")
EXPORTS = (UPSCALED_NC, "upscaled.nc.tmp", GEOTIFF)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one model set's directory ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @staticmethod
    def tmp_name(name: str) -> str:
        return name + ".tmp"

    def tmp(self, name: str) -> Path:
        """Where an output is written before it is renamed into place."""
        return self.root / (name + ".tmp")

    # ---- provenance
    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def stages(self) -> Path:
        return self.root / STAGES

    def marker(self, stage: str) -> Path:
        return self.root / STAGES / f"{stage}.json"

    @property
    def coarse(self) -> RunLayout:
        return RunLayout(self.root / COARSE)

    # ---- sites
    @property
    def sites(self) -> Path:
        return self.root / SITES

    # ---- forest
    @property
    def models(self) -> Path:
        return self.root / MODELS

    def model(self, flux: str) -> Path:
        return self.root / MODELS / f"{flux}.npz"

    @property
    def forest_json(self) -> Path:
        return self.root / FOREST_JSON

    @property
    def cv(self) -> Path:
        return self.root / CV

    @property
    def cv_predictions(self) -> Path:
        return self.root / CV_PREDICTIONS

    # ---- interpret
    @property
    def interpret(self) -> Path:
        return self.root / INTERPRET

    @property
    def importance(self) -> Path:
        return self.root / IMPORTANCE

    # ---- bootstrap
    @property
    def bootstrap(self) -> Path:
        return self.root / BOOTSTRAP

    @property
    def bootstrap_json(self) -> Path:
        return self.root / BOOTSTRAP_JSON

    def member(self, flux: str, member: int) -> Path:
        return self.root / BOOTSTRAP / f"{flux}_{member:02d}.npz"

    # ---- extrapolation
    @property
    def uncertainty(self) -> Path:
        return self.root / UNCERTAINTY

    @property
    def extrapolation_json(self) -> Path:
        return self.root / EXTRAPOLATION_JSON

    @property
    def extrapolation_sd(self) -> Path:
        return self.root / EXTRAPOLATION_SD

    # ---- network simulation
    @property
    def network(self) -> Path:
        return self.root / NETWORK

    @property
    def network_errors(self) -> Path:
        return self.root / NETWORK_ERRORS

    @property
    def network_summary(self) -> Path:
        return self.root / NETWORK_SUMMARY

    @property
    def network_period(self) -> Path:
        return self.root / NETWORK_PERIOD

    @property
    def network_trends(self) -> Path:
        return self.root / NETWORK_TRENDS

    @property
    def network_json(self) -> Path:
        return self.root / NETWORK_JSON

    # ---- upscale
    @property
    def upscaled(self) -> Path:
        return self.root / UPSCALED

    @property
    def members_monthly(self) -> Path:
        return self.root / MEMBERS_MONTHLY

    @property
    def upscale_partial(self) -> Path:
        return self.root / UPSCALE_PARTIAL

    # ---- budgets
    @property
    def budgets(self) -> Path:
        return self.root / BUDGETS

    @property
    def budgets_annual(self) -> Path:
        return self.root / BUDGETS_ANNUAL

    @property
    def budgets_period_sd(self) -> Path:
        return self.root / BUDGETS_PERIOD_SD

    @property
    def coverage(self) -> Path:
        return self.root / COVERAGE

    # ---- trends
    @property
    def trends(self) -> Path:
        return self.root / TRENDS

    @property
    def trend_maps(self) -> Path:
        return self.root / TREND_MAPS

    @property
    def budget_trends(self) -> Path:
        return self.root / BUDGET_TRENDS

    # ---- fire
    @property
    def fire(self) -> Path:
        return self.root / FIRE

    @property
    def burned_cells(self) -> Path:
        return self.root / BURNED_CELLS

    @property
    def fire_json(self) -> Path:
        return self.root / FIRE_JSON

    # ---- compare
    @property
    def compare(self) -> Path:
        return self.root / COMPARE

    @property
    def extrapolation_maps(self) -> Path:
        return self.root / EXTRAPOLATION_MAPS

    @property
    def product_maps(self) -> Path:
        return self.root / PRODUCT_MAPS

    # ---- summary
    @property
    def summary_md(self) -> Path:
        return self.root / SUMMARY_MD

    @property
    def summary_json(self) -> Path:
        return self.root / SUMMARY_JSON

    # ---- report and exports
    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def report_html(self) -> Path:
        return self.root / REPORT_HTML

    @property
    def upscaled_nc(self) -> Path:
        return self.root / UPSCALED_NC

    @property
    def geotiff(self) -> Path:
        return self.root / GEOTIFF
