"""Run configuration: a TOML file, validated key by key.

Paths are relative to the config file. Unknown sections or keys are errors (a typo must not
silently fall back to a default).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .errors import ConfigError
from .vocab import CENTRALS, CV_MODES, DEFAULT_PERMAFROST, DEFAULT_SEED, MIN_OOB_TREES, PERMAFROST_RULES


@dataclass
class Inputs:
    sites: Path
    predictors: Path
    zones: Path
    fire: Path | None = None
    truth: Path | None = None
    references: list | None = None  # reference products (docs/compare.md), paths relative to the config


@dataclass
class RunSettings:
    seed: int = DEFAULT_SEED
    years: str | None = None  # "2001-2020"; default: every complete year of the predictor stack
    scheduler: str | None = None  # dask.distributed scheduler address (CV folds, upscaling); "local" = LocalCluster
    tile: int = 128  # upscaling chunk: tile x tile cells x 12 months (also the output Zarr chunk)

    def year_range(self, file) -> tuple[int, int] | None:
        if self.years is None:
            return None
        try:
            a, b = (int(v) for v in str(self.years).split("-"))
        except ValueError:
            raise ConfigError(
                file, f"invalid years {self.years!r}", column="run.years", expected='"FIRST-LAST", e.g. "2001-2020"'
            ) from None
        if a > b:
            raise ConfigError(file, f"first year {a} after last year {b}", column="run.years")
        return a, b


@dataclass
class ForestSettings:
    n_estimators: int = 500
    mtry: int | None = None  # None: tune by leave-one-site-out CV over mtry_grid
    mtry_grid: list | None = None  # None: caret's default floor(seq(2, p, length = 3))
    nodesize: int = 5
    central: str = "mean"  # or "qrf_median" (quantile regression forest, the original code)
    # CV for skill (and for tuning when mtry is None): "loso" (exact leave-one-site-out, the paper),
    # "site_oob" (grouped out-of-bag, fast; docs/models.md) or "none"; true / false = "loso" / "none"
    cv: str | bool = "loso"
    oob_site_fraction: float = 0.1  # site_oob: share of the sites each tree leaves out
    oob_trees: int = 1500  # site_oob: trees per mtry forest (each site is out of ~fraction x this many)
    importance_repeats: int = 100
    pdp_points: int = 51
    pdp_rows: int = 0  # 0: all training rows; otherwise an evenly spaced subset of rows
    n_bootstrap: int = 20
    bootstrap_mtry: str = "reuse"  # "reuse" the tuned mtry (capped at 15) or "retune" by LOSO

    def __post_init__(self):
        if isinstance(self.cv, bool):  # old configs: cv = true / false
            self.cv = "loso" if self.cv else "none"

    @property
    def cross_validates(self) -> bool:
        return self.cv != "none"


@dataclass
class BudgetSettings:
    source_threshold: float = 0.0  # g C m-2 yr-1: a cell / site with mean annual NEE above it is a source
    decade_length: int = 10  # Fig. 3 periods: consecutive complete blocks of this many years from the first
    coverage_warn: float = 0.001  # warn when a zone-year loses more than this share of its land (NaN predictors)
    coverage_stop: float = 0.05  # stop (validate, run) above this share; 1 never stops (docs/budgets.md)
    # The permafrost region from the zones' `permafrost` value (docs/budgets.md "Permafrost region"),
    # the same in every budget, Table 1 (in situ too), source and trend area shares: "mask" (a cell /
    # site is in the region when its value > permafrost_threshold; default 0: every permafrost class
    # of the IPA map, the paper's region) or "weighted" (each counts with its value).
    permafrost: str = DEFAULT_PERMAFROST[0]
    permafrost_threshold: float = DEFAULT_PERMAFROST[1]


@dataclass
class FireSettings:
    first_year: int | None = None  # start of the fire record used (paper: 2002); default: first year of the fire file
    target_year: int | None = None  # year of the bias-correction test (paper: 2020); default: last run year
    alpha: float = 0.05  # significance of the mixed model's slope and intercept
    months: list | None = None  # months corrected; default: those whose slope and intercept are both significant
    # years-since-fire window (0..this) of the bias models and the correction (paper: 0-18 years)
    max_years_since_fire: float = 18.0


@dataclass
class CompareSettings:
    """Comparison with reference products and extrapolation diagnostics (docs/compare.md)."""

    subtract_fire: bool = True  # subtract the run's fire emissions from products whose `fire_included` = 1
    regrid_subsamples: int = 10  # n: n x n sub-points per analysis cell for lat/lon products
    mess_period_length: int = 5  # years per MESS period; the last period absorbs the remainder
    n_clusters: int = 8  # k-means environmental clusters
    cluster_sample: int = 100000  # at most this many land cells fit the k-means (all cells are labelled)
    aoa_max_training: int = 20000  # AOA: training rows used (an evenly spaced subset beyond this)
    grid: str = "product"  # correlate maps on each product's own grid ("product") or on the analysis grid
    min_cover: float = 0.5  # product cells: least share of their land where abzflux has every year


@dataclass
class TrendSettings:
    """zyp's options for every trend (docs/trends.md). The paper's text: Zhang prewhitening; the
    authors' scripts used zyp.yuepilon with preserve.range.for.sig.test = TRUE."""

    prewhitening: str = "zhang"  # "zhang" (Zhang et al. 2000, the paper) or "yuepilon" (Yue et al. 2002)
    preserve_range_for_sig_test: bool = False  # zyp's preserve.range.for.sig.test (zyp 0.11-1 default FALSE)


@dataclass
class UncertaintySettings:
    """How the ± of maps and budgets is computed (docs/uncertainty.md)."""

    method: str = "rows"  # bootstrap resampling unit: "rows" (the paper's), "sites" or "blocks"
    block_km: float = 1000.0  # "blocks": sites grouped into square spatial blocks of this size (km)
    extrapolation: bool = False  # add an SD term that grows with the dissimilarity index (DI)
    extrapolation_cv: str = "multicv"  # its DI-error fit: "loso" residuals only, or + leave-cluster-out CV
    network: bool = False  # add the network-simulation error term (docs/uncertainty.md)
    network_replicates: int = 20  # replicates of the network simulation
    network_trees: int | None = None  # trees of each replicate forest (default: forest.n_estimators)
    network_stride: int = 1  # predict every n-th grid row and column in the replicates (1: every cell)
    network_distance: bool = False  # the network term also simulates error growing with distance to the sites


@dataclass
class CoarseSet:
    """A second model set on its own grid and period (the paper's 8 km, 1990-2016): its own
    predictors, zones, models and outputs (written to ``RUN/coarse``); same forest settings."""

    predictors: Path
    zones: Path
    sites: Path | None = None  # default: [inputs] sites
    fire: Path | None = None
    truth: Path | None = None
    references: list | None = None  # reference products on the coarse grid (or lat/lon)
    years: str | None = None  # default: every complete year of its predictor stack


@dataclass
class PredictorSettings:
    """The declared predictor set (``[predictors]``; docs/formats.md §2b): ``use`` (names in model
    order; default the paper's 17), ``drop`` (names removed) and ``declare`` (the
    ``[predictors.<name>]`` tables: overrides of a paper predictor, or a new one). Both model sets
    (fine and ``[coarse]``) use it."""

    use: list | None = None
    drop: list | None = None
    declare: dict = field(default_factory=dict)


#: Values of the site table's ``method`` column (formats.read_site_table).
SITE_METHODS = ("EC", "chamber")


@dataclass
class SiteSettings:
    """Which site-months train the forests (``[sites]``; the paper's sensitivity runs,
    Supplementary Table 5): ``disturbance`` keeps the rows whose disturbance is listed ("none"
    = undisturbed or not given), ``method`` the rows measured by a listed method, ``all_fluxes``
    the rows with GPP, Reco and NEE all present. Default: every row."""

    disturbance: list | None = None
    method: list | None = None
    all_fluxes: bool = False


CHOICES = {
    "forest.central": CENTRALS,
    "forest.cv": CV_MODES,
    "budgets.permafrost": PERMAFROST_RULES,
    "forest.bootstrap_mtry": ("reuse", "retune"),
    "uncertainty.method": ("rows", "sites", "blocks"),
    "uncertainty.extrapolation_cv": ("loso", "multicv"),
    "trends.prewhitening": ("zhang", "yuepilon"),
    "compare.grid": ("product", "analysis"),
}


@dataclass
class Config:
    inputs: Inputs
    run: RunSettings = field(default_factory=RunSettings)
    forest: ForestSettings = field(default_factory=ForestSettings)
    budgets: BudgetSettings = field(default_factory=BudgetSettings)
    fire: FireSettings = field(default_factory=FireSettings)
    compare: CompareSettings = field(default_factory=CompareSettings)
    uncertainty: UncertaintySettings = field(default_factory=UncertaintySettings)
    trends: TrendSettings = field(default_factory=TrendSettings)
    coarse: CoarseSet | None = None
    source: Path | None = None
    predictors: PredictorSettings = field(default_factory=PredictorSettings)
    sites: SiteSettings = field(default_factory=SiteSettings)

    def predictor_set(self):
        """The declared :class:`~abzflux.predictors.PredictorSet` (default: the paper's 17)."""
        from .predictors import from_declaration

        p = self.predictors
        return from_declaration(p.use, p.drop, p.declare, self.source or "<config>")

    def coarse_config(self) -> Config | None:
        """The coarse model set as a Config of its own (None without a [coarse] section)."""
        if self.coarse is None:
            return None
        c = self.coarse
        return Config(
            inputs=Inputs(
                sites=c.sites or self.inputs.sites,
                predictors=c.predictors,
                zones=c.zones,
                fire=c.fire,
                truth=c.truth,
                references=c.references,
            ),
            run=replace(self.run, years=c.years),
            forest=self.forest,
            budgets=self.budgets,
            fire=self.fire,
            compare=self.compare,
            uncertainty=self.uncertainty,
            trends=self.trends,
            coarse=None,
            source=self.source,
            predictors=self.predictors,
            sites=self.sites,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("source")
        return _jsonable(d)


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _section(cls, raw: dict, name: str, file, base: Path | None = None):
    if not isinstance(raw, dict):
        raise ConfigError(file, f"section [{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    for k in raw:
        if k not in known:
            raise ConfigError(file, f"unknown key {k!r}", column=f"{name}.{k}", expected=f"one of {sorted(known)}")
    kw = {}
    for k, v in raw.items():
        t = str(known[k].type)
        if "Path" in t:
            if not isinstance(v, str):
                raise ConfigError(file, f"expected a path string, got {v!r}", column=f"{name}.{k}")
            p = Path(v)
            kw[k] = p if p.is_absolute() else (base / p)
        elif t.startswith("int"):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(file, f"expected an integer, got {v!r}", column=f"{name}.{k}")
            kw[k] = v
        elif t.startswith("float"):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(file, f"expected a number, got {v!r}", column=f"{name}.{k}")
            kw[k] = float(v)
        elif t.startswith("bool"):
            if not isinstance(v, bool):
                raise ConfigError(file, f"expected true or false, got {v!r}", column=f"{name}.{k}")
            kw[k] = v
        elif t.startswith("list") and name == "sites":
            kw[k] = v  # lists of names, checked by _site_section
        elif t.startswith("list") and k == "references":
            if not isinstance(v, list) or not all(isinstance(i, str) for i in v):
                raise ConfigError(file, f"expected a list of path strings, got {v!r}", column=f"{name}.{k}")
            kw[k] = [Path(i) if Path(i).is_absolute() else base / i for i in v]
        elif t.startswith("list"):
            if not isinstance(v, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in v) or not v:
                raise ConfigError(file, f"expected a non-empty list of integers, got {v!r}", column=f"{name}.{k}")
            kw[k] = v
        elif t == "str | bool" and isinstance(v, bool):
            kw[k] = v  # an old boolean spelling, mapped by the dataclass
        elif t.startswith("str"):
            if not isinstance(v, str):
                raise ConfigError(file, f"expected a string, got {v!r}", column=f"{name}.{k}")
            allowed = CHOICES.get(f"{name}.{k}")
            if allowed and v not in allowed:
                raise ConfigError(
                    file, f"invalid value {v!r}", column=f"{name}.{k}", expected=f"one of {list(allowed)}"
                )
            kw[k] = v
        else:
            kw[k] = v
    missing = [f.name for f in fields(cls) if f.name not in kw and f.default is f.default_factory is _MISSING]
    if missing:
        raise ConfigError(file, f"missing required key(s) {missing}", column=name)
    return cls(**kw)


from dataclasses import MISSING as _MISSING  # noqa: E402


def _names(v, key: str, file) -> list:
    if not isinstance(v, list) or not all(isinstance(i, str) and i for i in v):
        raise ConfigError(file, f"expected a list of names, got {v!r}", column=key)
    return list(v)


def _predictor_section(raw, file) -> PredictorSettings:
    """``[predictors]``: ``use`` and ``drop`` (lists of names) and ``[predictors.<name>]`` tables,
    checked by resolving the set (unknown names and fields are errors)."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "section [predictors] must be a table")
    out = PredictorSettings()
    for k, v in raw.items():
        if k in ("use", "drop"):
            setattr(out, k, _names(v, f"predictors.{k}", file))
        elif isinstance(v, dict):
            out.declare[k] = dict(v)
        else:
            raise ConfigError(
                file,
                f"unknown key {k!r}",
                column=f"predictors.{k}",
                expected="`use`, `drop` or a [predictors.NAME] table (source, units, long_name, kind, categorical, range)",
            )
    from .predictors import from_declaration

    from_declaration(out.use, out.drop, out.declare, file)  # raises on a bad declaration
    return out


def _site_section(raw, file) -> SiteSettings:
    out = _section(SiteSettings, raw, "sites", file)
    if out.disturbance is not None:
        out.disturbance = [d.strip().lower() for d in _names(out.disturbance, "sites.disturbance", file)]
    if out.method is not None:
        got = _names(out.method, "sites.method", file)
        low = {m.lower(): m for m in SITE_METHODS}
        bad = [m for m in got if m.lower() not in low]
        if bad:
            raise ConfigError(
                file, f"unknown method(s) {bad}", column="sites.method", expected=f"some of {list(SITE_METHODS)}"
            )
        out.method = [low[m.lower()] for m in got]
    return out


def load_config(path) -> Config:
    """Read and validate a run configuration TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, "config file does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"not valid TOML: {e}") from None
    allowed = {
        "inputs",
        "run",
        "forest",
        "budgets",
        "fire",
        "compare",
        "uncertainty",
        "trends",
        "coarse",
        "predictors",
        "sites",
    }
    for k in raw:
        if k not in allowed:
            raise ConfigError(path, f"unknown section [{k}]", expected=f"one of {sorted(allowed)}")
    if "inputs" not in raw:
        raise ConfigError(path, "missing section [inputs]")
    base = path.resolve().parent
    cfg = Config(
        inputs=_section(Inputs, raw["inputs"], "inputs", path, base),
        run=_section(RunSettings, raw.get("run", {}), "run", path),
        forest=_section(ForestSettings, raw.get("forest", {}), "forest", path),
        budgets=_section(BudgetSettings, raw.get("budgets", {}), "budgets", path),
        fire=_section(FireSettings, raw.get("fire", {}), "fire", path),
        compare=_section(CompareSettings, raw.get("compare", {}), "compare", path),
        uncertainty=_section(UncertaintySettings, raw.get("uncertainty", {}), "uncertainty", path),
        trends=_section(TrendSettings, raw.get("trends", {}), "trends", path),
        coarse=_section(CoarseSet, raw["coarse"], "coarse", path, base) if "coarse" in raw else None,
        source=path,
        predictors=_predictor_section(raw.get("predictors", {}), path),
        sites=_site_section(raw.get("sites", {}), path),
    )
    for sec, obj in (("inputs", cfg.inputs), ("coarse", cfg.coarse)):
        for k in ("sites", "predictors", "zones", "fire", "truth"):
            p = getattr(obj, k, None) if obj is not None else None
            if p is not None and not p.exists():
                raise ConfigError(path, f"input path does not exist: {p}", column=f"{sec}.{k}")
        for i, p in enumerate((getattr(obj, "references", None) or []) if obj is not None else []):
            if not p.exists():
                raise ConfigError(path, f"input path does not exist: {p}", column=f"{sec}.references[{i}]")
    cfg.run.year_range(path)
    if cfg.coarse is not None:
        replace(cfg.run, years=cfg.coarse.years).year_range(path)
    for key, value, lo in (
        ("forest.n_estimators", cfg.forest.n_estimators, 1),
        ("run.tile", cfg.run.tile, 8),
        ("budgets.decade_length", cfg.budgets.decade_length, 1),
        ("forest.nodesize", cfg.forest.nodesize, 1),
        ("forest.mtry", cfg.forest.mtry, 1),
        ("forest.importance_repeats", cfg.forest.importance_repeats, 0),
        ("forest.pdp_points", cfg.forest.pdp_points, 2),
        ("forest.pdp_rows", cfg.forest.pdp_rows, 0),
        ("forest.n_bootstrap", cfg.forest.n_bootstrap, 0),
        ("uncertainty.network_replicates", cfg.uncertainty.network_replicates, 2),
        ("uncertainty.network_trees", cfg.uncertainty.network_trees, 1),
        ("uncertainty.network_stride", cfg.uncertainty.network_stride, 1),
        ("compare.regrid_subsamples", cfg.compare.regrid_subsamples, 1),
        ("compare.mess_period_length", cfg.compare.mess_period_length, 1),
        ("compare.n_clusters", cfg.compare.n_clusters, 1),
        ("compare.cluster_sample", cfg.compare.cluster_sample, 100),
        ("compare.aoa_max_training", cfg.compare.aoa_max_training, 100),
    ):
        if value is not None and value < lo:
            raise ConfigError(path, f"{value} is out of range", column=key, expected=f"an integer >= {lo}")
    if cfg.uncertainty.network_replicates > MAX_NETWORK_REPLICATES:  # the forest seed streams' room
        raise ConfigError(
            path,
            f"{cfg.uncertainty.network_replicates} is out of range",
            column="uncertainty.network_replicates",
            expected=f"an integer <= {MAX_NETWORK_REPLICATES}",
        )
    fs = cfg.fire
    bad = [m for m in (fs.months or []) if not 1 <= m <= 12]
    if bad or len(set(fs.months or [])) != len(fs.months or []):
        raise ConfigError(
            path, f"invalid month list {fs.months}", column="fire.months", expected="distinct calendar months 1-12"
        )
    if not 0.0 < fs.alpha < 1.0:
        raise ConfigError(path, f"{fs.alpha} is out of range", column="fire.alpha", expected="a number in (0, 1)")
    if not (math.isfinite(fs.max_years_since_fire) and fs.max_years_since_fire > 0):
        raise ConfigError(
            path,
            f"{fs.max_years_since_fire} is out of range",
            column="fire.max_years_since_fire",
            expected="a finite number of years > 0",
        )
    if fs.first_year is not None and fs.target_year is not None and fs.first_year > fs.target_year:
        raise ConfigError(
            path,
            f"first_year {fs.first_year} after target_year {fs.target_year}",
            column="fire.first_year",
            expected="fire.first_year <= fire.target_year",
        )
    if not 0.0 <= cfg.compare.min_cover <= 1.0:
        raise ConfigError(
            path,
            f"{cfg.compare.min_cover} is out of range",
            column="compare.min_cover",
            expected="a share of a product cell's land in [0, 1]",
        )
    for key in ("coverage_warn", "coverage_stop"):
        v = getattr(cfg.budgets, key)
        if not 0.0 <= v <= 1.0:
            raise ConfigError(
                path,
                f"{v} is out of range",
                column=f"budgets.{key}",
                expected="a share of land in [0, 1] (1: never stop)",
            )
    if not 0.0 <= cfg.budgets.permafrost_threshold < 1.0:
        raise ConfigError(
            path,
            f"{cfg.budgets.permafrost_threshold} is out of range",
            column="budgets.permafrost_threshold",
            expected="a permafrost value in [0, 1) (a cell is in the region when its value exceeds it)",
        )
    if not (cfg.uncertainty.block_km > 0 and cfg.uncertainty.block_km < float("inf")):
        raise ConfigError(
            path,
            f"{cfg.uncertainty.block_km} is out of range",
            column="uncertainty.block_km",
            expected="a block size in km > 0",
        )
    check_ranges(cfg, path)
    return cfg


#: Largest seed numpy's generators accept (seeds are unsigned 32-bit integers).
MAX_SEED = 2**32 - 1
#: compare.regrid_subsamples: n x n points per cell; beyond this the regridding's point arrays
#: (cells x n²) outgrow memory without changing the weights measurably.
MAX_REGRID_SUBSAMPLES = 100
#: Replicate r's forests take the ``network_forest`` streams 3r..3r+2 (offset 4000), which must
#: stay below the next stream's offset (5000).
MAX_NETWORK_REPLICATES = 333
#: Calendar years a run, a fire record or a site table may name (as formats.read_site_table).
YEAR_RANGE = (1900, 2100)


def check_ranges(cfg: Config, path) -> None:
    """Every setting within its range or choices (the checks of :func:`load_config` above cover
    the counts' lower bounds): what a run would otherwise fail on, or silently misuse, after
    the run directory was created. Settings that depend on the predictors (mtry) are checked
    against the declared predictor set."""
    pset = cfg.predictor_set()
    p_all = len(pset)
    p_boot = len(pset.bootstrap_names)
    r, fo, fi = cfg.run, cfg.forest, cfg.fire
    if not 0 <= r.seed <= MAX_SEED:
        raise ConfigError(
            path, f"seed {r.seed} is out of range", column="run.seed", expected=f"an integer in 0..{MAX_SEED}"
        )
    if r.scheduler is not None and not r.scheduler.strip():
        raise ConfigError(
            path,
            "empty scheduler address",
            column="run.scheduler",
            expected='"local" or a dask.distributed scheduler address such as "tcp://host:8786"',
        )
    for sec, years in (("run", r.years), ("coarse", cfg.coarse.years if cfg.coarse is not None else None)):
        if years is not None:
            a, b = replace(r, years=years).year_range(path)
            if not (YEAR_RANGE[0] <= a and b <= YEAR_RANGE[1]):
                raise ConfigError(
                    path,
                    f"years {years!r} outside {YEAR_RANGE[0]}-{YEAR_RANGE[1]}",
                    column=f"{sec}.years",
                    expected=f'"FIRST-LAST" within {YEAR_RANGE[0]}-{YEAR_RANGE[1]}',
                )
    if fo.mtry is not None and fo.mtry > p_all:
        raise ConfigError(
            path,
            f"mtry {fo.mtry} is more than the {p_all} predictors",
            column="forest.mtry",
            expected=f"an integer in 1..{p_all} (predictors tried at each split)",
        )
    if p_boot == 0 and fo.n_bootstrap > 0:
        raise ConfigError(
            path,
            f"every predictor of the set {list(pset.names)} is categorical: the bootstrap forests, which drop the "
            "factors, would have none",
            column="forest.n_bootstrap",
            expected="a continuous predictor in the set, or forest.n_bootstrap = 0",
        )
    if fo.mtry_grid is not None:
        top = p_boot if fo.bootstrap_mtry == "retune" else p_all
        bad = [m for m in fo.mtry_grid if not 1 <= m <= top]
        if bad or len(set(fo.mtry_grid)) != len(fo.mtry_grid):
            why = (
                f' (bootstrap_mtry = "retune" tunes the bootstrap forests\' {p_boot} predictors over it)'
                if fo.bootstrap_mtry == "retune"
                else ""
            )
            raise ConfigError(
                path,
                f"invalid mtry grid {fo.mtry_grid}{why}",
                column="forest.mtry_grid",
                expected=f"distinct integers in 1..{top}",
            )
    if not 0.0 < fo.oob_site_fraction <= 0.5:
        raise ConfigError(
            path,
            f"{fo.oob_site_fraction} is out of range",
            column="forest.oob_site_fraction",
            expected="a share of the sites in (0, 0.5] (each site_oob tree leaves out 1/round(1/share) of them)",
        )
    k = max(2, round(1.0 / fo.oob_site_fraction))
    if fo.oob_trees // k < MIN_OOB_TREES:
        raise ConfigError(
            path,
            f"oob_trees {fo.oob_trees} leaves each site out of only {fo.oob_trees // k} trees",
            column="forest.oob_trees",
            expected=f"at least {MIN_OOB_TREES * k} trees with oob_site_fraction {fo.oob_site_fraction} "
            f"(every site out of >= {MIN_OOB_TREES} trees)",
        )
    for key, value in (("budgets.source_threshold", cfg.budgets.source_threshold),):
        if not math.isfinite(value):
            raise ConfigError(
                path, f"{value} is not a finite number", column=key, expected="a finite threshold in g C m-2 yr-1"
            )
    for key, value in (("fire.first_year", fi.first_year), ("fire.target_year", fi.target_year)):
        if value is not None and not YEAR_RANGE[0] <= value <= YEAR_RANGE[1]:
            raise ConfigError(
                path,
                f"year {value} is out of range",
                column=key,
                expected=f"a year in {YEAR_RANGE[0]}..{YEAR_RANGE[1]}",
            )
    cs = cfg.compare
    if cs.regrid_subsamples > MAX_REGRID_SUBSAMPLES:
        raise ConfigError(
            path,
            f"{cs.regrid_subsamples} is out of range",
            column="compare.regrid_subsamples",
            expected=f"an integer in 1..{MAX_REGRID_SUBSAMPLES} (n x n sub-points per analysis cell)",
        )
    if cs.n_clusters > cs.cluster_sample:
        raise ConfigError(
            path,
            f"n_clusters {cs.n_clusters} is more than cluster_sample {cs.cluster_sample}",
            column="compare.n_clusters",
            expected="n_clusters <= cluster_sample (cells fitting the k-means)",
        )
