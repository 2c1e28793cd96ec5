"""Command-line interface: ``abzflux --help``."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from . import layout as L
from . import progress
from .errors import InputError, RunDirConflict
from .layout import RunLayout
from .vocab import DEFAULT_SEED

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="abzflux: Arctic-boreal CO2 flux upscaling (site fluxes -> maps, budgets, trends).",
)
console = Console()
log = logging.getLogger(__name__)
LOGGER = logging.getLogger("abzflux")  # every library module logs under it


class _ConsoleHandler(RichHandler):
    """abzflux's log records on a terminal (installed once per command; see :func:`_root`)."""


class _LineHandler(logging.Handler):
    """abzflux's log records off a terminal (a log file, CI, a batch job): one line per record,
    never wrapped at the console's width, so a progress line stays one line for grep and tail.
    Writes to the console's file at each record (as RichHandler does), so a redirected stdout is
    followed."""

    def __init__(self, out: Console):
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        try:
            f = self.out.file
            f.write(self.format(record) + "\n")
            f.flush()
        except Exception:
            self.handleError(record)


def _setup_logging(level: int) -> None:
    for h in [h for h in LOGGER.handlers if isinstance(h, (_ConsoleHandler, _LineHandler))]:
        LOGGER.removeHandler(h)
    if console.is_terminal:
        LOGGER.addHandler(_ConsoleHandler(console=console, show_path=False, markup=False, rich_tracebacks=False))
    else:
        h = _LineHandler(console)
        h.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)-8s %(message)s", "%Y-%m-%d %H:%M:%S"))
        LOGGER.addHandler(h)
    LOGGER.setLevel(level)


def _quiet(quiet: bool) -> None:
    """A subcommand's own ``--quiet``: only warnings and errors (and the command's results)."""
    if quiet:
        LOGGER.setLevel(max(LOGGER.level, logging.WARNING))


def _terminated(signum, frame):
    # SIGTERM (a batch scheduler's time limit, `kill`, Ctrl-C's cousin) becomes an exception,
    # so the clean-up code runs: a twin's partial directory is removed, a run marks run.json
    # failed. Finished work is kept either way (SIGKILL is covered by the resume logic).
    raise SystemExit(128 + signum)


@app.callback()
def _root(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log only warnings and errors (results are still shown)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages too."),
):
    signal.signal(signal.SIGTERM, _terminated)
    _setup_logging(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)


def _years(s: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in s.split("-"))
    except ValueError:
        raise typer.BadParameter(f"expected FIRST-LAST, e.g. 2001-2020, got {s!r}") from None
    if a > b:
        raise typer.BadParameter(f"first year {a} is after last year {b}")
    return a, b


def _progress_factory(quiet: bool):
    """Progress of long loops (:mod:`abzflux.progress`): bars on a terminal, a log line every
    ``$ABZFLUX_PROGRESS_SECONDS`` (default 30) otherwise; nothing with ``--quiet``."""
    quiet = quiet or LOGGER.getEffectiveLevel() > logging.INFO  # `abzflux --quiet CMD`: no bars either
    try:
        return progress.factory(console, quiet=quiet)
    except ValueError as e:
        _fail(e)


def _table(title: str, columns: list[tuple[str, bool]]) -> Table:
    """A table that reads at 80 columns: light rules, two spaces between columns; ``columns``:
    (header, numeric). Numeric columns are right-aligned and never wrapped or cut (they keep
    their full width; the text columns wrap instead), so a number is always printed whole."""
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1), title_justify="left")
    for header, numeric in columns:
        if numeric:
            t.add_column(header, justify="right", no_wrap=True, overflow="fold")
        else:
            t.add_column(header, overflow="fold")
    return t


def _label(name: str) -> str:
    """A zone or variant name as a table shows it: underscores as spaces, so it can wrap."""
    return name.replace("_", " ")


def _fail(e: Exception) -> None:
    # escape: messages name columns as "[column]", which rich would take for markup
    console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=2)


@app.command()
def twin(
    out: Path = typer.Option(..., "--out", help="Directory to create (must not exist or be empty)."),
    resolution_km: float = typer.Option(
        50, "--resolution-km", help="Grid spacing (km); e.g. 8 for the paper's coarse grid."
    ),
    years: str = typer.Option("2001-2020", "--years", help="FIRST-LAST calendar years."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed: the same seed gives identical files."),
    n_sites: int = typer.Option(200, "--sites", help="Number of flux sites."),
    n_site_months: int = typer.Option(4900, "--site-months", help="Target number of site-months."),
    network: str = typer.Option(
        "realistic",
        "--network",
        help="Site network: realistic (biased), uniform, or a FILE whose sites, months, "
        "methods and disturbances the twin's sites take (docs/twin.md).",
    ),
    network_format: str = typer.Option(
        "contract",
        "--network-format",
        help="Format of --network FILE: contract (a site table) or abcflux (a raw "
        "ABCflux CSV, read as `abzflux sites import abcflux` does).",
    ),
    coarse_km: float = typer.Option(
        None, "--coarse-km", help="Also write a coarse model set's twin at this spacing (in out/coarse)."
    ),
    coarse_years: str = typer.Option("1990-2016", "--coarse-years", help="FIRST-LAST years of the coarse set."),
    site_effects: str = typer.Option(
        "biased",
        "--site-effects",
        help="Site observation model: biased (the default: site effects whose mean exceeds 1, "
        "disturbance effects) or centred (unbiased observations of the cell's truth; docs/twin.md).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
):
    """Write a synthetic Arctic-boreal twin: contract input files plus the true fluxes."""
    from .twin import SITE_EFFECTS, TwinSpec, make_twin

    y0, y1 = _years(years)
    if site_effects not in SITE_EFFECTS:
        raise typer.BadParameter(f"--site-effects: one of {', '.join(SITE_EFFECTS)}")
    table = None
    if network not in ("realistic", "uniform"):  # a network file; the world is the realistic twin's
        from .twin_network import read_network

        try:
            table = read_network(Path(network), network_format)
        except InputError as e:
            _fail(e)
        network_path, network = network, "realistic"
    spec = TwinSpec(
        resolution_km=resolution_km,
        first_year=y0,
        last_year=y1,
        seed=seed,
        n_sites=n_sites,
        n_site_months=n_site_months,
        network=network,
        site_effects=site_effects,
    )
    coarse = None
    if coarse_km:
        c0, c1 = _years(coarse_years)
        coarse = TwinSpec(
            resolution_km=coarse_km,
            first_year=c0,
            last_year=c1,
            seed=seed + 1,
            n_sites=n_sites,
            n_site_months=n_site_months,
            network=network,
            site_effects=site_effects,
        )
    t0 = time.perf_counter()
    prog = _progress_factory(quiet)("generating twin years")
    try:
        summary = make_twin(out, spec, progress=prog, coarse=coarse, network=table)
    except (ValueError, FileExistsError) as e:
        _fail(e)
    finally:
        prog(None, None)
    console.print(
        f"twin written to [bold]{out}[/] in {time.perf_counter() - t0:.1f} s: "
        f"{summary['sites']} sites, {summary['site_months']} site-months, "
        f"domain {summary['domain_area_km2'] / 1e6:.2f} million km²",
        soft_wrap=True,
    )
    if "network" in summary:
        r = summary["network"]
        console.print(
            f"network {escape(str(network_path))}: {r['sites_placed']} of {r['sites_in_table']} sites placed "
            f"({r['sites_outside_grid']} outside the grid, {r['sites_without_domain_land']} in cells without "
            f"domain land, {r['sites_without_months']} without months in the years; {r['sites_shifted']} "
            f"shifted in time, {r['site_months_truncated']} site-months outside the years): twin.json, key "
            "network",
            soft_wrap=True,
            highlight=False,
        )


# --- raw twin (issue 22): the twin's world as raw public products plus a prepare recipe ------
@app.command("twin-raw")
def twin_raw(
    out: Path = typer.Option(..., "--out", help="Directory to create (must not exist or be empty)."),
    resolution_km: float = typer.Option(100, "--resolution-km", help="The twin's grid spacing (km)."),
    years: str = typer.Option("2001-2020", "--years", help="FIRST-LAST calendar years."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed: the same seed gives identical files."),
    n_sites: int = typer.Option(200, "--sites", help="Number of flux sites."),
    n_site_months: int = typer.Option(4900, "--site-months", help="Target number of site-months."),
    contract: Path = typer.Option(
        None, "--contract", help="Read this existing twin directory instead of generating one into OUT/contract."
    ),
    native: bool = typer.Option(
        False, "--native", help="The products' own grids (0.1-degree ERA5-Land, 1-km MODIS, ...): gigabytes per year."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
):
    """Write the twin's world as raw public products (ERA5-Land, TerraClimate, MODIS, GFED, ...)
    in their real layouts, plus OUT/recipe.toml for `abzflux prepare` (docs/prepare_rawtwin.md)."""
    from .twin import TwinSpec
    from .twin_raw import NATIVE_GRIDS, make_raw_twin

    y0, y1 = _years(years)
    spec = TwinSpec(
        resolution_km=resolution_km,
        first_year=y0,
        last_year=y1,
        seed=seed,
        n_sites=n_sites,
        n_site_months=n_site_months,
    )
    t0 = time.perf_counter()
    prog = _progress_factory(quiet)("generating twin years")
    try:
        summary = make_raw_twin(out, spec, contract=contract, grids=NATIVE_GRIDS if native else None, progress=prog)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        _fail(e)
    finally:
        prog(None, None)
    console.print(
        f"raw twin written to [bold]{out}[/] in {time.perf_counter() - t0:.1f} s "
        f"({summary['bytes'] / 1e6:.1f} MB of raw files); recipe: [bold]{out / 'recipe.toml'}[/]",
        soft_wrap=True,
    )


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run configuration (TOML)."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: 'run' beside the config)."),
    force: bool = typer.Option(False, "--force", help="Recompute every stage."),
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Delete the run directory's previous outputs (only what abzflux wrote) and "
        "start over; needed when they came from another config or other inputs.",
    ),
    scheduler: str = typer.Option(
        None,
        "--scheduler",
        help="dask.distributed scheduler address (tcp://host:8786), or 'local' for a "
        "LocalCluster; overrides run.scheduler. Default: this process.",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="Only errors and the final summary."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write RUN_DIR/report.html at the end."),
):
    """Run the study described by CONFIG: sites, forests, upscaling, budgets, summary, report."""
    from .config import load_config
    from .runner import run_study

    _quiet(quiet)
    try:
        cfg = load_config(config)
        if scheduler:
            cfg.run.scheduler = scheduler
        out = out or cfg.source.resolve().parent / "run"
        # The summary and the report are written with the run directory still locked.

        def finish() -> None:
            _print_summary(out)
            if report:
                report_ok.append(_write_report(out, quiet))

        report_ok: list[bool] = []
        run_study(cfg, out, force=force, restart=restart, progress_factory=_progress_factory(quiet), finish=finish)
    except InputError as e:
        _fail(e)
    if not all(report_ok):
        raise typer.Exit(REPORT_FAILED)


REPORT_FAILED = 3
"""Exit code of `run` and `demo` when every stage finished but the report could not be written."""


def _write_report(run_dir: Path, quiet: bool) -> bool:
    """The HTML report of a finished run; False when it could not be written (a figure that
    failed is a warning). Never raises: the run's outputs are complete whatever happens here
    (the report is written to temporary names and renamed)."""
    from .report import write_report
    from .rundir import owning

    prog = _progress_factory(quiet)("report figures")
    try:
        with owning(run_dir, REPORT_PATHS, "report"):
            rep = write_report(run_dir, progress=prog)
    except Exception as e:  # noqa: BLE001 - a failed report must not fail a finished run
        console.print(
            f"[bold red]report failed:[/] {escape(f'{type(e).__name__}: {e}')} "
            f"(the run's outputs are complete; retry with `abzflux report {escape(str(run_dir))}`)",
            soft_wrap=True,
        )
        return False
    finally:
        prog(None, None)
    for name, msg in rep.errors:
        console.print(f"[bold yellow]warning:[/] figure {name} failed: {escape(msg)}", soft_wrap=True)
    console.print(
        f"report: [bold]{rep.path}[/] ({len(rep.items)} figures and tables, {rep.seconds:.1f} s)", soft_wrap=True
    )
    return True


# What `abzflux report` writes into a run directory (recorded as abzflux's, rundir.owning).
REPORT_PATHS = (L.REPORT_HTML, L.REPORT, L.REPORT + ".tmp", L.REPORT + ".old")


def _print_summary(run_dir: Path) -> None:
    lay = RunLayout(run_dir)
    s = json.loads(lay.summary_json.read_text())
    if "truth" in s:
        t = _table(
            "Budgets vs truth: period mean (Tg C yr-1) and Theil–Sen trend (Tg C yr-2); "
            f"± method: {s.get('uncertainty', 'rows')}",
            [("flux", False), ("zone", False)]
            + [(c, True) for c in ("estimate", "± SD", "truth", "error", "error\n%", "trend", "true\ntrend")],
        )
        import pandas as pd

        from .summary import order

        for r in order(pd.DataFrame(s["truth"])).itertuples():
            sd = getattr(r, "sd", float("nan"))
            t.add_row(
                r.flux,
                _label(r.zone),
                f"{r.estimate:.1f}",
                f"{sd:.1f}",
                f"{r.truth:.1f}",
                f"{r.error:+.1f}",
                f"{100 * r.rel_error:+.1f}",
                f"{r.trend:+.1f}",
                f"{r.trend_truth:+.1f}",
            )
        console.print(t)
        console.print(f"mean annual NEE map vs truth: Pearson r = {s['nee_map_pearson_r']:.3f}")
    else:
        t = _table(
            "Budgets, period mean", [("flux", False), ("zone", False), ("Tg C yr-1", True), ("g C m-2 yr-1", True)]
        )
        for r in s["budgets"]:
            t.add_row(r["flux"], _label(r["zone"]), f"{r['tg_c']:.1f}", f"{r['density']:.1f}")
        console.print(t)
    cmp = s.get("compare", {})
    if cmp.get("products"):
        t = _table(
            "Reference products vs abzflux NEE (RUN/compare); source area: share of the land that is a source",
            [("product", False), ("years", True), ("fire\nsubtracted", False), ("map r", True), ("trend r", True)]
            + [("source area\nabzflux", True), ("source area\nproduct", True)],
        )
        for r in cmp["products"]:
            t.add_row(
                r["product"],
                f"{r['first_year']}-{r['last_year']}",
                "yes" if r["fire_subtracted"] else "no",
                f"{r['map_r']:.2f}",
                f"{r['trend_r']:.2f}",
                f"{100 * r['source_share_abzflux']:.0f}%",
                f"{100 * r['source_share_product']:.0f}%",
            )
        console.print(t)
    if cmp.get("nee_sd_inside_outside_aoa"):
        a, b = cmp["nee_sd_inside_outside_aoa"]
        console.print(f"NEE bootstrap SD inside / outside the area of applicability: {a:.1f} / {b:.1f} g C m-2 yr-1")
    console.print(f"summary: [bold]{lay.summary_md}[/]", soft_wrap=True)
    if lay.coarse.summary_md.exists():
        console.print(f"coarse model set summary: [bold]{lay.coarse.summary_md}[/]", soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Directory for the twin and the run."),
    resolution_km: float = typer.Option(100, "--resolution-km", help="Twin grid spacing (km)."),
    years: str = typer.Option("2001-2020", "--years", help="FIRST-LAST calendar years."),
    coarse_km: float = typer.Option(200, "--coarse-km", help="Coarse model set's grid spacing (km); 0: none."),
    coarse_years: str = typer.Option("1990-2016", "--coarse-years", help="FIRST-LAST years of the coarse set."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or stage log."),
    restart: bool = typer.Option(False, "--restart", help="Delete OUT/run's previous outputs and start over."),
):
    """Generate a twin (fine and coarse model sets) and run the whole study on it."""
    from .config import load_config
    from .runner import run_study
    from .twin import TwinSpec, make_twin

    _quiet(quiet)
    y0, y1 = _years(years)
    spec = TwinSpec(resolution_km=resolution_km, first_year=y0, last_year=y1, seed=seed)
    coarse = None
    if coarse_km:
        c0, c1 = _years(coarse_years)
        coarse = TwinSpec(resolution_km=coarse_km, first_year=c0, last_year=c1, seed=seed + 1)
    twin_dir = out / "twin"
    new_twin = False
    existing = twin_dir / "twin.json"
    if (
        existing.exists()
        and json.loads(existing.read_text())["spec"] == spec.__dict__
        and json.loads(existing.read_text()).get("coarse", {}).get("spec") == (coarse.__dict__ if coarse else None)
    ):
        log.info(f"reusing twin in {twin_dir}")
    else:
        if twin_dir.exists():
            console.print(
                f"[bold red]error:[/] {twin_dir} holds a different or incomplete twin; remove it first", soft_wrap=True
            )
            raise typer.Exit(code=2)
        t0 = time.perf_counter()
        prog = _progress_factory(quiet)("generating twin years")
        try:
            make_twin(twin_dir, spec, progress=prog, coarse=coarse)
        finally:
            prog(None, None)
        log.info(f"twin written to {twin_dir} in {time.perf_counter() - t0:.1f} s")
        new_twin = True
    try:
        cfg = load_config(twin_dir / "config.toml")

        def finish() -> None:
            _print_summary(out / "run")
            report_ok.append(_write_report(out / "run", quiet))

        report_ok: list[bool] = []

        try:
            run_study(cfg, out / "run", restart=restart, progress_factory=_progress_factory(quiet), finish=finish)
        except RunDirConflict:
            if not new_twin:
                raise
            # The twin was just (re)generated: the demo's previous run came from other inputs.
            log.info(f"{out / 'run'} holds a run of an earlier twin: starting over")
            run_study(cfg, out / "run", restart=True, progress_factory=_progress_factory(quiet), finish=finish)
    except InputError as e:
        _fail(e)
    if not all(report_ok):
        raise typer.Exit(REPORT_FAILED)


@app.command()
def calibrate(
    out: Path = typer.Option(..., "--out", help="Directory for the twins, runs and calibration tables."),
    twins: int = typer.Option(5, "--twins", help="Number of twins (>= 5)."),
    networks: str = typer.Option(
        "realistic,uniform",
        "--networks",
        help="Site networks, comma-separated, assigned to the twins in turn; see --realistic for the split.",
    ),
    realistic: int | None = typer.Option(
        None,
        "--realistic",
        help="How many of the twins use the realistic network (default: all but 2 when both networks are given).",
    ),
    seed: int = typer.Option(101, "--seed", help="Seed of the first twin; twin i uses seed + i."),
    resolution_km: float = typer.Option(200, "--resolution-km", help="Twin grid spacing (km)."),
    years: str = typer.Option("2011-2020", "--years", help="FIRST-LAST calendar years."),
    methods: str = typer.Option(
        "rows,sites,blocks",
        "--methods",
        help="Bootstrap methods (rows, sites, blocks); each is also scored with the extrapolation term (+extrap).",
    ),
    trees: int = typer.Option(100, "--trees", help="Trees per forest (final, CV and bootstrap)."),
    n_bootstrap: int = typer.Option(10, "--bootstrap", help="Bootstrap forests per flux and method."),
    block_km: float = typer.Option(1000, "--block-km", help="Spatial block size of the blocks method (km)."),
    network_file: Path = typer.Option(
        None,
        "--network-file",
        help="Every twin takes this site network (sites, months, methods, "
        "disturbances; docs/twin.md), labelled by the file's name; "
        "--networks and --realistic are then ignored.",
    ),
    network_format: str = typer.Option(
        "contract", "--network-format", help="Format of --network-file: contract or abcflux."
    ),
    extrapolation: bool = typer.Option(
        True,
        "--extrap/--no-extrap",
        help="Score the +extrap variants (needs leave-one-site-out CV, one forest per site: slow on large networks).",
    ),
    network_replicates: int = typer.Option(
        0,
        "--network-replicates",
        help="Also score the network-simulation term (+network variants) with this many replicates "
        "(0: off; needs the leave-one-site-out CV, which then runs).",
    ),
    cv: str = typer.Option(
        "loso",
        "--cv",
        help="The CV the extrapolation and network terms read: loso (exact leave-one-site-out) or "
        "site_oob (its fast grouped out-of-bag stand-in; docs/models.md).",
    ),
    site_effects: str = typer.Option(
        "biased",
        "--site-effects",
        help="Site observation model of the twins: biased, centred, or both (each seed twice, "
        "paired: same world and sites; docs/twin.md).",
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No stage log or progress."),
):
    """Calibrate the uncertainty methods on twins: does the ± cover the true zone budgets?"""
    from .calibrate import BOOT_METHODS, run_calibration
    from .twin import SITE_EFFECTS

    y0, y1 = _years(years)
    if twins < 5:
        raise typer.BadParameter("--twins must be at least 5")
    tables = None
    if network_file is not None:
        from .twin_network import read_network

        try:
            tables = {network_file.stem: read_network(network_file, network_format)}
        except InputError as e:
            _fail(e)
        networks, realistic = network_file.stem, None
    nets = [n.strip() for n in networks.split(",") if n.strip()]
    if not nets or any(n not in ("realistic", "uniform", *(tables or {})) for n in nets):
        raise typer.BadParameter("--networks: comma-separated realistic and/or uniform")
    ms = [m.strip() for m in methods.split(",") if m.strip()]
    if not ms or any(m not in BOOT_METHODS for m in ms):
        raise typer.BadParameter(f"--methods: comma-separated, from {list(BOOT_METHODS)}")
    if len(nets) == 1:
        plan = nets * twins
    else:
        n_real = realistic if realistic is not None else twins - 2
        if not 0 <= n_real <= twins:
            raise typer.BadParameter("--realistic must be between 0 and --twins")
        plan = ["realistic"] * n_real + ["uniform"] * (twins - n_real)
    if network_replicates == 1 or network_replicates < 0:
        raise typer.BadParameter("--network-replicates: 0 (off) or at least 2")
    if cv not in ("loso", "site_oob"):
        raise typer.BadParameter("--cv: loso or site_oob")
    effects = list(SITE_EFFECTS) if site_effects == "both" else [site_effects]
    if any(e not in SITE_EFFECTS for e in effects):
        raise typer.BadParameter(f"--site-effects: one of {', '.join(SITE_EFFECTS)} or both")
    spec = [{"network": n, "seed": seed + i, "site_effects": e} for i, n in enumerate(plan) for e in effects]
    _quiet(quiet)
    t0 = time.perf_counter()
    try:
        _, summ = run_calibration(
            out,
            spec,
            ms,
            resolution_km=resolution_km,
            years=(y0, y1),
            n_estimators=trees,
            n_bootstrap=n_bootstrap,
            block_km=block_km,
            network_tables=tables,
            extrapolation=extrapolation,
            network={"network_replicates": network_replicates} if network_replicates else None,
            cv_mode=cv,
            progress_factory=_progress_factory(quiet),
        )
    except (InputError, ValueError) as e:
        _fail(e)
    t = _table(
        f"truth inside ±1 and ±2 SD ({twins} twins, {time.perf_counter() - t0:.0f} s)",
        [("method", False), ("network", False), ("flux", False)]
        + [(c, True) for c in ("zone-\nyears", "±1 SD", "±2 SD", "median\n|err|/SD")],
    )
    for r in summ.itertuples():
        t.add_row(
            r.method,
            r.network + ("" if getattr(r, "site_effects", "biased") == "biased" else f" ({r.site_effects})"),
            r.flux,
            str(r.n),
            f"{100 * r.coverage1:.0f}%",
            f"{100 * r.coverage2:.0f}%",
            f"{r.median_ratio:.2f}",
        )
    console.print(t)
    console.print(
        f"tables and figure in [bold]{out}[/]: calibration.csv, calibration_summary.csv/.md, calibration.png",
        soft_wrap=True,
    )


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log; only the report's path."),
):
    """Write RUN_DIR/report.html (self-contained) and every figure as PNG and PDF in RUN_DIR/report/."""
    from .report import write_report
    from .rundir import fs_error, is_fs_error, locked, owning

    _quiet(quiet)
    prog = _progress_factory(quiet)("report figures")
    try:
        if not run_dir.is_dir():
            raise InputError(str(run_dir), "no such run directory", expected="a finished run directory")
        # Not while a run writes into the directory (the lock), and only over abzflux's own report.
        with locked(run_dir, "report"), owning(run_dir, REPORT_PATHS, "report"):
            rep = write_report(run_dir, progress=prog)
    except OSError as e:
        if not is_fs_error(e):
            raise
        _fail(fs_error(e, run_dir, where="the report"))
    except InputError as e:
        _fail(e)
    finally:
        prog(None, None)
    for name, msg in rep.errors:
        console.print(f"[bold yellow]warning:[/] figure {name} failed: {escape(msg)}", soft_wrap=True)
    console.print(
        f"report: [bold]{rep.path}[/] ({len(rep.items)} figures and tables, {rep.seconds:.1f} s)", soft_wrap=True
    )
    if rep.errors:
        raise typer.Exit(code=1)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="Run directory (holds upscaled.zarr)."),
    fmt: str = typer.Option(
        "netcdf", "--format", help="netcdf (one CF file) or geotiff (one file per variable and year)."
    ),
    variables: str = typer.Option(None, "--vars", help="Comma-separated variables (default: all), e.g. nee,nee_sd."),
    model_set: str = typer.Option("fine", "--set", help="fine (RUN_DIR) or coarse (RUN_DIR/coarse)."),
    out: Path = typer.Option(None, "--out", help="Output file (netcdf) or directory (geotiff). Default: in RUN_DIR."),
):
    """Export the upscaled monthly fluxes to NetCDF or GeoTIFF."""
    from contextlib import nullcontext

    from .rundir import FileSystemError, fs_error, is_fs_error, locked, owning
    from .upscale import export_geotiff, export_netcdf

    base = RunLayout(run_dir).coarse if model_set == "coarse" else RunLayout(run_dir)
    store = base.upscaled
    names = [v.strip() for v in variables.split(",")] if variables else None
    target = out or (base.upscaled_nc if fmt == "netcdf" else base.geotiff)
    try:
        if model_set not in ("fine", "coarse"):
            raise InputError(str(run_dir), f"unknown model set {model_set!r}", expected="fine or coarse")
        if fmt not in ("netcdf", "geotiff"):
            raise InputError(str(run_dir), f"unknown format {fmt!r}", expected="netcdf or geotiff")
        if not store.exists():
            raise InputError(str(store), "no upscaled store: run the study first", expected="RUN_DIR/upscaled.zarr")
        if fmt == "netcdf" and target.is_dir():
            raise FileSystemError(str(target), "is a directory", expected="--out naming a NetCDF file (NAME.nc)")
        if fmt == "geotiff" and target.exists() and not target.is_dir():
            raise FileSystemError(str(target), "is a file", expected="--out naming a directory for the GeoTIFF files")
        if not target.parent.is_dir():
            raise FileSystemError(
                str(target.parent),
                "no such directory",
                where=f"the parent of --out {target}",
                expected="an existing directory",
            )
        # Not while a run writes the store (the lock); the default paths only over abzflux's own export.
        own = owning(base.root, [target.name, target.name + ".tmp"], "export") if out is None else nullcontext()
        with locked(run_dir, "export", read_only_ok=out is not None), own:
            if fmt == "netcdf":
                path = export_netcdf(store, target, names)
                console.print(f"wrote [bold]{path}[/]", soft_wrap=True)
            else:
                paths = export_geotiff(store, target, names)
                console.print(f"wrote {len(paths)} GeoTIFF files to [bold]{paths[0].parent}[/]", soft_wrap=True)
    except OSError as e:
        if not is_fs_error(e):
            raise
        _fail(fs_error(e, target, where="the export"))
    except InputError as e:
        _fail(e)


# ---------------------------------------------------------------------------- prepare
@app.command()
def prepare(
    recipe: Path = typer.Argument(..., help="Recipe (TOML): target grid, years and the source of every layer."),
    out: Path = typer.Option(
        ..., "--out", help="Directory for the contract files (created; resumed if it holds a partial prepare)."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Delete what an earlier prepare wrote in --out (only that) and start again."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars or log; only errors and the result."),
):
    """Build the contract inputs (predictors, zones, fire, references, config.toml) from raw products."""
    from .prepare.build import prepare as run_prepare

    _quiet(quiet)
    t0 = time.time()
    try:
        record = run_prepare(recipe, out, restart=restart, progress_factory=_progress_factory(quiet))
    except InputError as e:
        _fail(e)
    console.print(
        f"[green]prepared[/] {escape(str(out))}: {len(record['layers'])} layer(s) in {time.time() - t0:.1f} s; "
        f"run config {escape(str(out / 'config.toml'))}",
        highlight=False,
    )


@app.command()
def validate(config: Path = typer.Argument(..., help="Run configuration (TOML).")):
    """Check every input of CONFIG against the format contract, writing nothing."""
    from .config import load_config
    from .runner import validate_study

    if LOGGER.level == logging.INFO:  # warnings (e.g. sites dropped) are shown; notes only with -v
        LOGGER.setLevel(logging.WARNING)
    try:
        # The same checks `run` makes before it writes anything (every model set).
        ctxs = validate_study(load_config(config))
    except InputError as e:
        _fail(e)
    for ctx in ctxs:
        sites, pred = ctx.sites(), ctx.predictors()
        label = "" if ctx is ctxs[0] else "coarse: "
        console.print(
            f"[green]ok[/]: {label}{len(sites)} site-months at {sites.site_id.nunique()} sites; "
            f"predictors {dict(pred.sizes)}"
        )


@app.command()
def domain(resolution_km: float = typer.Option(10, "--resolution-km", help="Grid spacing (km).")):
    """Describe the embedded default domain: area by biome and region."""
    from .domain import BIOMES, REGIONS, load_domain

    try:
        d = load_domain(resolution_km)
    except ValueError as e:
        _fail(e)
    area = d.land_fraction.astype("float64") * d.cell_area
    rows = [("domain", area.sum())]
    rows += [(n, area.where(d.biome == i + 1).sum()) for i, n in enumerate(BIOMES)]
    rows += [(n, area.where(d.region == i + 1).sum()) for i, n in enumerate(REGIONS)]
    t = _table(f"Default ABZ domain at {resolution_km} km (EPSG:6931)", [("zone", False), ("million km²", True)])
    for z, a in rows:
        t.add_row(_label(z), f"{float(a) / 1e12:.2f}")
    console.print(t)


sites_app = typer.Typer(no_args_is_help=True, help="Real site-month tables: import ABCflux, in-situ statistics.")
sites_import_app = typer.Typer(no_args_is_help=True, help="Import a published flux database as a site table.")
sites_app.add_typer(sites_import_app, name="import")
app.add_typer(sites_app, name="sites")


@sites_import_app.command("abcflux")
def sites_import_abcflux(
    file: Path = typer.Argument(..., help="The ABCflux CSV, or its zip (e.g. ABC.v2.apr24.csv.zip)."),
    out: Path = typer.Option(Path("sites.parquet"), "--out", help="Site table to write (.parquet or .csv)."),
    group_by: str = typer.Option("site_id", "--group-by", help="CV group: site_id (measurement set) or site_name."),
    years: str = typer.Option(None, "--years", help="FIRST-LAST calendar years to keep (default: all)."),
    tier: list[int] = typer.Option(None, "--tier", help="CO2 data-use tier(s) to keep, e.g. --tier 1 (default: all)."),
    all_biomes: bool = typer.Option(False, "--all-biomes", help="Keep every biome (default: boreal and tundra)."),
    zones: Path = typer.Option(None, "--zones", help="Keep only sites inside this zones file's domain."),
    aquatic: bool = typer.Option(False, "--aquatic", help="Keep aquatic rows (default: terrestrial only)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file this command did not write."),
):
    """Read the published ABCflux CSV into a site table, with an import report beside it."""
    from .abcflux import read_abcflux, write_abcflux

    if group_by not in ("site_id", "site_name"):
        raise typer.BadParameter("--group-by must be site_id or site_name")
    try:
        res = read_abcflux(
            file,
            group_by=group_by,
            period=_years(years) if years else None,
            tiers=set(tier) if tier else None,
            domain=None if all_biomes else "abz",
            zones=zones,
            terrestrial_only=not aquatic,
        )
        table, rep = write_abcflux(res, out, force=force)
    except InputError as e:
        _fail(e)
    r = res.report
    console.print(
        f"{r.rows_written} site-months at {r.sites_written} sites (of {r.rows_read} records) "
        f"written to [bold]{escape(str(table))}[/]; import report: {escape(str(rep))}",
        soft_wrap=True,
    )


@sites_app.command("summary")
def sites_summary(
    table: Path = typer.Argument(..., help="Site table (docs/formats.md section 1), e.g. from `sites import`."),
    out: Path = typer.Option(None, "--out", help="Also write the statistics as markdown to this file."),
):
    """In-situ statistics: annual fluxes by biome, source sites, latitude, cycles, trends."""
    from .formats import read_site_table
    from .insitu import summary, summary_markdown

    try:
        stats = summary(read_site_table(table))
    except InputError as e:
        _fail(e)
    # the terminal gets site names cut to fit 80 columns; the --out file keeps them whole
    console.print(summary_markdown(stats, site_width=28), markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        out.write_text(summary_markdown(stats))


# --------------------------------------------------------------------------- sensitivity (issue 22)
@app.command()
def sensitivity(
    config: Path = typer.Argument(..., help="Run configuration (TOML)."),
    out: Path = typer.Option(
        None,
        "--out",
        help="Output directory (default: RUN/sensitivity, RUN = 'run' beside the config, where the report finds it).",
    ),
    variants: str = typer.Option(
        None, "--variants", help="Comma-separated variant names (default: the main ones; --list shows all)."
    ),
    list_variants: bool = typer.Option(False, "--list", help="List the variants and exit."),
    quiet: bool = typer.Option(False, "--quiet", help="Only errors and the table."),
):
    """The paper's sensitivity runs (Supp. Table 5): leave-one-site-out skill of the forests on
    variants of CONFIG (without the factors, without disturbed sites, ...), side by side."""
    from .sensitivity import DEFAULT_VARIANTS, TABLE, VARIANTS, run_sensitivity

    if list_variants:
        for name, v in VARIANTS.items():
            console.print(f"{name}{' (default)' if name in DEFAULT_VARIANTS else ''}: {v.description}", highlight=False)
        return
    from .config import load_config

    _quiet(quiet)
    try:
        cfg = load_config(config)
        out = out or cfg.source.resolve().parent / "run" / "sensitivity"
        names = tuple(n.strip() for n in variants.split(",") if n.strip()) if variants else DEFAULT_VARIANTS
        table = run_sensitivity(cfg, out, names, progress_factory=_progress_factory(quiet))
    except InputError as e:
        _fail(e)
    t = _table(
        f"leave-one-site-out skill by variant ({escape(str(out / TABLE))})",
        [("variant", False), ("flux", False)]
        + [(c, True) for c in ("rows", "sites", "pre-\ndictors", "mtry", "R²", "RMSE", "MAE", "bias")],
    )
    for r in table.itertuples():
        vals = [r.r2, r.rmse, r.mae, r.bias]
        t.add_row(
            _label(r.variant),
            r.flux,
            *(str(int(v)) if v == v else "-" for v in (r.rows, r.sites, r.predictors, r.mtry)),
            *(f"{v:.2f}" if i == 0 else f"{v:.1f}" for i, v in enumerate(vals)),
        )
    console.print(t)


if __name__ == "__main__":
    app()
