"""The study's grid: every configuration it trains, one row each, in :data:`CONFIGURATIONS`.

A row says what the configuration trains (dataset, WBC subset, whether the mask term is on, the config fields it
changes), where it starts (from scratch, or from the model of another configuration of the same seed), which part
of the book it belongs to (``chapter``) and which cells of which tables it fills (``cells``). Everything else reads
this table: the study makes one job per row and seed (:func:`wbclib.study.runner.grid`), the analysis lays out its
tables from the cells (:mod:`wbclib.results.analysis`), the domain-shift chapter takes its settings from the
``shift`` rows, and the book and the notebooks count the runs with :func:`size`. Adding a configuration is adding
one row; ``tests/test_grid.py`` shows it.

Chapters:

- ``report``: the reference report's chain and its two tables, trained by every ``wbc study``;
- ``smears``: the chain pretrained on blood-smear tiles instead of H&E (``wbc study --smear-chain``);
- ``shift``: the domain-shift chapter's remedies (opt-in: ``wbc study --only 'shift-*'``).

A run's id is ``<configuration>-s<seed>``; the study writes the row's :func:`structure` into the run's
``run.json``, so the analysis never parses an id. The table lives in ``core``, the lowest package, because the
study (which trains it) and the results (which lay it out) both read it, and results may not import the study.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wbclib import WbcError

#: The order in which the stages of a chain train: a configuration only starts from one of an earlier stage.
STAGES = ("prcc", "cam16", "wbc")
CHAPTERS = ("report", "smears", "shift")


@dataclass(frozen=True)
class Cell:
    """A place in the book that a configuration's runs fill: a table, its row and (where it has several) column."""

    table: str
    row: str
    column: str | None = None


@dataclass(frozen=True)
class Configuration:
    """One row of the grid (see the module's docstring)."""

    id: str
    dataset: str  # prcc | cam16 | wbc
    subset: int | None = None  # WBC_<subset>; None for prcc and cam16
    masks: bool = True  # the Dice term on the masks
    start_from: str | None = None  # the configuration whose model it starts from (same seed); None: from scratch
    chapter: str = "report"  # report | smears | shift
    cells: tuple[Cell, ...] = ()
    overrides: dict | None = field(default=None, hash=False)  # config fields it changes (None: none)
    words: str = ""  # what it is, where the table's labels do not say it (the domain-shift remedies)


# Table 2's columns, and the three starting points of the blood-smear comparison ("chains").
NN, NM = "w/o pretrain, w/o mask", "w/o pretrain, with mask"
PN, PM = "with pretrain, w/o mask", "with pretrain, with mask"
SCRATCH, HE, SMEARS = ("from scratch", "H&E chain (EBHI tiles → CAM16 stage)",
                       "blood-smear chain (BCCD tiles → CAM16 stage)")
#: The CAM16 configuration every pretrained WBC run of the report starts from.
CAM16_FULL = "cam16-ce-prcc-dice"
#: What the domain-shift remedies change (colour and hue jitter, zoom), written once for the rows below.
_COLOR, _ZOOM = {"color_jitter": 0.3, "hue_jitter": 0.1}, {"zoom": [1.0, 3.0]}


def _wbc(n: int, column: str, masks: bool, pretrained: bool, *more: Cell) -> Configuration:
    """A Table 2 configuration: WBC_<n>, named from its column."""
    name = f"wbc{n}-{'pretrained' if pretrained else 'scratch'}-{'mask' if masks else 'nomask'}"
    return Configuration(name, "wbc", n, masks, CAM16_FULL if pretrained else None,
                         cells=(Cell("Table 2", f"WBC_{n}", column), *more))


def _shift(setting: str, overrides: dict, words: str) -> Configuration:
    """A domain-shift remedy: WBC_100 from scratch with masks, with ``overrides``."""
    return Configuration(f"shift-{setting}", "wbc", 100, chapter="shift", cells=(Cell("shift", setting),),
                         overrides=overrides, words=words)


#: Every configuration of the study, in the order of the book's tables (the runner orders the runs itself).
CONFIGURATIONS: tuple[Configuration, ...] = (
    # -- the report's chain: the reconstruction stage, Table 1 (CAM16), Table 2 (WBC) --------------------------
    Configuration("prcc", "prcc", masks=False, cells=(Cell("pretraining", "pRCC stage"),)),
    Configuration("cam16-ce", "cam16", masks=False, cells=(Cell("Table 1", "CE"),)),
    Configuration("cam16-ce-prcc", "cam16", masks=False, start_from="prcc", cells=(Cell("Table 1", "CE + pRCC"),)),
    Configuration("cam16-ce-dice", "cam16", cells=(Cell("Table 1", "CE + Dice"),)),
    Configuration(CAM16_FULL, "cam16", start_from="prcc", cells=(Cell("Table 1", "CE + pRCC + Dice"),)),
    _wbc(1, NN, False, False),
    _wbc(1, NM, True, False, Cell("chains", "WBC_1", SCRATCH)),
    _wbc(1, PN, False, True),
    _wbc(1, PM, True, True, Cell("chains", "WBC_1", HE)),
    _wbc(10, NN, False, False),
    _wbc(10, NM, True, False, Cell("chains", "WBC_10", SCRATCH)),
    _wbc(10, PN, False, True),
    _wbc(10, PM, True, True, Cell("chains", "WBC_10", HE)),
    _wbc(50, NN, False, False),
    _wbc(50, NM, True, False),
    _wbc(50, PN, False, True),
    _wbc(50, PM, True, True),
    _wbc(100, NN, False, False),
    _wbc(100, NM, True, False),
    _wbc(100, PN, False, True),
    _wbc(100, PM, True, True),
    # -- the blood-smear chain (--smear-chain): reconstruction on smear tiles, CAM16 with every loss, WBC --------
    Configuration("smears", "prcc", masks=False, chapter="smears", overrides={"prcc_folder": "smears_nolabel"}),
    Configuration("cam16-ce-smears-dice", "cam16", start_from="smears", chapter="smears"),
    Configuration("wbc1-smears-mask", "wbc", 1, start_from="cam16-ce-smears-dice", chapter="smears",
                  cells=(Cell("chains", "WBC_1", SMEARS),)),
    Configuration("wbc10-smears-mask", "wbc", 10, start_from="cam16-ce-smears-dice", chapter="smears",
                  cells=(Cell("chains", "WBC_10", SMEARS),)),
    # -- the domain-shift chapter (--only 'shift-*'): bn is the report's WBC_100 scratch-with-mask unchanged -----
    _shift("bn", {}, "BatchNorm, the default augmentation (the study's WBC_100 model)"),
    _shift("gn", {"norm": "group"}, "GroupNorm instead of BatchNorm"),
    _shift("bn-color", _COLOR, "stronger colour jitter with a hue shift"),
    _shift("bn-zoom", _ZOOM, "half the images enlarged 1-3x"),
    _shift("bn-color-zoom", {**_COLOR, **_ZOOM}, "colour and zoom"),
    _shift("gn-color-zoom", {"norm": "group", **_COLOR, **_ZOOM}, "GroupNorm, colour and zoom"),
    _shift("bn-robust", {"jpeg_quality": [30, 95], "blur": 1.0, "resample": [0.5, 1.0], "zoom": [0.7, 1.4]},
           "image-quality augmentation: JPEG re-compression, blur, shrink-and-enlarge, mild zoom"),
    # bn-robust's switches one at a time (no name starts like another's: --only 'shift-bn-robust-*' is one setting)
    _shift("bn-jpeg", {"jpeg_quality": [30, 95]}, "JPEG re-compression of quality 30-95 alone"),
    _shift("bn-blur", {"blur": 1.0}, "Gaussian blur of sigma up to 1 pixel alone"),
    _shift("bn-resample", {"resample": [0.5, 1.0]}, "shrink-and-enlarge by 0.5-1 with a random interpolation alone"),
    _shift("bn-mildzoom", {"zoom": [0.7, 1.4]}, "zoom 0.7-1.4 alone"),
)


def configurations(*chapters: str) -> list[Configuration]:
    """The rows of the given chapters (all rows when none is given), in table order."""
    return [c for c in CONFIGURATIONS if not chapters or c.chapter in chapters]


def get(configuration: str) -> Configuration | None:
    """The row of a configuration id, or None for a run made outside the grid (``wbc train``)."""
    return next((c for c in CONFIGURATIONS if c.id == configuration), None)


def size(*chapters: str) -> int:
    """How many configurations (runs per seed) the chapters hold; the report's alone by default."""
    return len(configurations(*(chapters or ("report",))))


def table(name: str) -> list[tuple[Cell, Configuration]]:
    """Every cell of table ``name`` with the configuration that fills it, in table order."""
    return [(cell, c) for c in CONFIGURATIONS for cell in c.cells if cell.table == name]


def rows(name: str) -> list[str]:
    """The row labels of table ``name``, in order (a row's first appearance in the grid)."""
    return list(dict.fromkeys(cell.row for cell, _ in table(name)))


def columns(name: str) -> list[str]:
    """The column labels of table ``name``, in order (empty for a table with one configuration per row)."""
    return list(dict.fromkeys(cell.column for cell, _ in table(name) if cell.column is not None))


def cell(name: str, row: str, column: str | None = None) -> Configuration | None:
    """The configuration that fills a cell of table ``name``, or None where nothing does."""
    return next((c for got, c in table(name) if got.row == row and got.column == column), None)


def params(c: Configuration, seed: int) -> dict:
    """The notebook parameters of one run: dataset, subset (WBC), masks, seed and the config fields it changes."""
    return {"dataset": c.dataset, **({"subset": c.subset} if c.subset is not None else {}), "masks": c.masks,
            **({"overrides": dict(c.overrides)} if c.overrides is not None else {}), "seed": seed}


def structure(c: Configuration, seed: int) -> dict:
    """What the study records in a run's ``run.json``: its configuration, seed, dataset, subset, masks, whether
    it starts from another model, and its place in the book (``chapter`` report or shift; the blood-smear chain
    is part of the report's pages, marked ``chain: smears``; a shift run's remedy is its ``setting``)."""
    out = {"configuration": c.id, "seed": seed, "chapter": "shift" if c.chapter == "shift" else "report",
           "dataset": c.dataset, "subset": c.subset, "masks": c.masks, "pretrained": c.start_from is not None}
    if c.chapter == "smears":
        out["chain"] = "smears"
    if c.chapter == "shift":
        out["setting"] = c.cells[0].row
    return out


def run_order(c: Configuration) -> tuple:
    """Where a configuration's run goes within one seed: the stages in chain order, then the largest WBC subsets
    first (the longest runs, so that parallel slots finish together), then from scratch before pretrained."""
    return STAGES.index(c.dataset), -(c.subset or 0), c.start_from is not None, c.masks


def check(grid: tuple[Configuration, ...] | None = None) -> None:
    """Raise :class:`WbcError` unless the grid is consistent: ids unique, known datasets and chapters, WBC rows
    with a subset, every starting point a row of an earlier stage (in the same chapter or the report's), and no
    cell filled twice."""
    grid = CONFIGURATIONS if grid is None else grid
    ids, cells = {}, set()
    for c in grid:
        if c.id in ids:
            raise WbcError(f"grid: configuration {c.id!r} is defined twice")
        ids[c.id] = c
        if c.dataset not in STAGES or c.chapter not in CHAPTERS:
            raise WbcError(f"grid: {c.id}: dataset must be one of {STAGES} and chapter one of {CHAPTERS}")
        if (c.dataset == "wbc") != (c.subset is not None):
            raise WbcError(f"grid: {c.id}: a WBC configuration needs a subset, and only a WBC one has one")
        for place in c.cells:
            if place in cells:
                raise WbcError(f"grid: {c.id}: cell {place} is filled twice")
            cells.add(place)
    for c in grid:
        start = ids.get(c.start_from) if c.start_from else None
        if c.start_from and (start is None or STAGES.index(start.dataset) >= STAGES.index(c.dataset)
                             or start.chapter not in ("report", c.chapter)):
            raise WbcError(f"grid: {c.id} starts from {c.start_from!r}, which is not a configuration of an earlier "
                           "stage of its chain")
