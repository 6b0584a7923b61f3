"""Run a Databricks source-format notebook cell by cell, as the platform would.

``parse`` splits ``# Databricks notebook source`` files at ``# COMMAND ----------``; a cell whose
lines all start with ``# MAGIC`` is a magic cell (``%md`` kept as text, ``%pip`` recorded and
skipped: the package is installed here, ``%sql`` run with ``spark.sql``, ``%run ./other`` runs
that notebook in the same scope). Python cells run with ``exec`` in one namespace holding the
stand-ins Databricks provides: ``spark`` (the session given), ``dbutils`` (widgets only:
``text``/``dropdown``/``get``/``getAll``/``remove``/``removeAll``, defaults overridable, an
unknown name raises as on Databricks) and ``display``/``displayHTML``, which record what each
cell showed. ``display`` makes Spark DataFrames run (it collects up to 1000 rows, as the
platform's does) and renders figures to PNG, so a broken query or plot fails the cell.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
MAGIC = "# MAGIC"


@dataclass
class Cell:
    index: int
    kind: str            # "python" | "md" | "pip" | "sql" | "run"
    source: str
    shown: list = field(default_factory=list)     # what display() got: ("table", pandas) / ("figure", png bytes) / ("html", str)


def parse(path: str) -> list[Cell]:
    with open(path) as fh:
        text = fh.read()
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"{path}: first line is not {HEADER!r}")
    cells, chunk = [], []
    for line in lines[1:] + [SEPARATOR]:
        if line.strip() == SEPARATOR:
            src = "\n".join(chunk).strip("\n")
            if src.strip():
                cells.append(_cell(len(cells), src))
            chunk = []
        else:
            chunk.append(line)
    return cells


def _cell(index: int, src: str) -> Cell:
    body = [ln for ln in src.splitlines() if ln.strip()]
    if body and all(ln.startswith(MAGIC) for ln in body):
        text = "\n".join(ln[len(MAGIC):].removeprefix(" ") for ln in src.splitlines())
        head = text.strip().split(None, 1)[0]
        kinds = {"%md": "md", "%pip": "pip", "%sql": "sql", "%run": "run"}
        if head not in kinds:
            raise ValueError(f"cell {index}: unsupported magic {head!r}")
        return Cell(index, kinds[head], text.strip()[len(head):].strip())
    return Cell(index, "python", src)


class WidgetNotDefined(Exception):
    """What ``dbutils.widgets.get`` raises on Databricks for a widget no cell created."""


class Widgets:
    def __init__(self, overrides: dict[str, str] | None = None):
        self.overrides = dict(overrides or {})
        self.defaults: dict[str, str] = {}
        self.values: dict[str, str] = {}

    def _add(self, name: str, default: str) -> None:
        self.defaults[name] = str(default)
        self.values[name] = str(self.overrides.get(name, default))

    def text(self, name, defaultValue, label=None):
        self._add(name, defaultValue)

    def dropdown(self, name, defaultValue, choices, label=None):
        if defaultValue not in choices:
            raise ValueError(f"widget {name!r}: default {defaultValue!r} not among {choices}")
        self._add(name, defaultValue)
        if self.values[name] not in choices:
            raise ValueError(f"widget {name!r}: {self.values[name]!r} not among {choices}")

    combobox = dropdown

    def get(self, name):
        if name not in self.values:
            raise WidgetNotDefined(f"No input widget named {name} is defined")
        return self.values[name]

    def getAll(self):
        return dict(self.values)

    def remove(self, name):
        self.values.pop(name, None)

    def removeAll(self):
        self.values.clear()


class DBUtils:
    def __init__(self, widgets: dict[str, str] | None = None):
        self.widgets = Widgets(widgets)


class NotebookRun:
    """One notebook's execution: ``cells`` (with what each showed) and the final ``scope``."""

    def __init__(self, path: str, spark, widgets: dict[str, str] | None = None):
        self.path = path
        self.spark = spark
        self.dbutils = DBUtils(widgets)
        self.cells: list[Cell] = []
        self.current: Cell | None = None
        self.scope: dict = {"spark": spark, "dbutils": self.dbutils, "display": self.display,
                            "displayHTML": self.display_html, "__name__": "__main__"}

    # ---- the platform's display -----------------------------------------------------------
    def display(self, obj, *args, **kwargs):
        from matplotlib.figure import Figure
        import pandas as pd

        if isinstance(obj, Figure):
            buf = io.BytesIO()
            obj.savefig(buf, format="png")
            self.current.shown.append(("figure", obj, buf.getvalue()))
        elif isinstance(obj, pd.DataFrame):
            self.current.shown.append(("table", obj))
        elif hasattr(obj, "limit") and hasattr(obj, "toPandas"):     # a Spark DataFrame
            self.current.shown.append(("table", obj.limit(1000).toPandas()))
        else:
            raise TypeError(f"display() got a {type(obj).__name__}, which the platform does not render")

    def display_html(self, html: str):
        self.current.shown.append(("html", str(html)))

    # ---- running ---------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> "NotebookRun":
        """Every cell top to bottom (or up to cell ``stop_after``); an error names the cell."""
        for cell in parse(self.path):
            if stop_after is not None and cell.index > stop_after:
                break
            self.run_cell(cell)
        unknown = sorted(set(self.dbutils.widgets.overrides) - set(self.dbutils.widgets.defaults))
        if stop_after is None and unknown:
            raise AssertionError(f"widgets {unknown} were given values but no cell defines them")
        return self

    def run_cell(self, cell: Cell) -> Cell:
        self.current = cell
        self.cells.append(cell)
        name = f"{os.path.basename(self.path)}[cell {cell.index}]"
        try:
            if cell.kind == "python":
                exec(compile(cell.source, name, "exec"), self.scope)
            elif cell.kind == "sql":
                self.display(self.spark.sql(cell.source))
            elif cell.kind == "run":
                other = os.path.join(os.path.dirname(self.path), cell.source.split()[0])
                other = other if other.endswith(".py") else other + ".py"
                for sub in parse(other):
                    self.run_cell(sub)
                self.current = cell
        except Exception as exc:
            raise AssertionError(f"{name} failed: {type(exc).__name__}: {exc}\n--- cell source ---\n"
                                 f"{cell.source}") from exc
        return cell

    def shown(self, kind: str) -> list:
        return [s for c in self.cells for s in c.shown if s[0] == kind]

    def cell_with(self, text: str) -> Cell:
        hits = [c for c in self.cells if text in c.source]
        assert len(hits) == 1, f"{len(hits)} cells contain {text!r}"
        return hits[0]
