"""The notebook runner itself: cells, magics, %run, widgets, display (no Spark needed)."""
from __future__ import annotations

import pytest

from notebook_runner import NotebookRun, parse

MAIN = """# Databricks notebook source
# MAGIC %md
# MAGIC # Title

# COMMAND ----------

# MAGIC %pip install something

# COMMAND ----------

dbutils.widgets.text("n", "3", "How many")
dbutils.widgets.dropdown("mode", "a", ["a", "b"])

# COMMAND ----------

# MAGIC %run ./helper

# COMMAND ----------

import pandas as pd
total = helper(int(dbutils.widgets.get("n")))
display(pd.DataFrame({"total": [total]}))
"""

HELPER = """# Databricks notebook source
def helper(n):
    return sum(range(n))
"""


@pytest.fixture()
def notebooks(tmp_path):
    (tmp_path / "main.py").write_text(MAIN)
    (tmp_path / "helper.py").write_text(HELPER)
    return tmp_path


def test_parse_kinds(notebooks):
    assert [c.kind for c in parse(str(notebooks / "main.py"))] == ["md", "pip", "python", "run", "python"]
    bad = notebooks / "bad.py"
    bad.write_text("print(1)\n")
    with pytest.raises(ValueError, match="first line"):
        parse(str(bad))


def test_run_with_overrides_and_run_magic(notebooks):
    nb = NotebookRun(str(notebooks / "main.py"), spark=None, widgets={"n": "5"}).run()
    assert nb.scope["total"] == 10
    (kind, table), = nb.shown("table")
    assert kind == "table" and table["total"].tolist() == [10]
    assert NotebookRun(str(notebooks / "main.py"), None).run().scope["total"] == 3


def test_misuse_is_caught(notebooks):
    with pytest.raises(AssertionError, match=r"widgets \['nn'\] were given values"):
        NotebookRun(str(notebooks / "main.py"), None, {"nn": "5"}).run()
    with pytest.raises(AssertionError, match="not among"):
        NotebookRun(str(notebooks / "main.py"), None, {"mode": "c"}).run()
    broken = notebooks / "broken.py"
    broken.write_text(MAIN.replace("helper(int", "helpr(int"))
    with pytest.raises(AssertionError, match=r"broken.py\[cell 4\] failed: NameError"):
        NotebookRun(str(broken), None).run()
    with pytest.raises(AssertionError, match="does not render"):
        nb = NotebookRun(str(notebooks / "main.py"), None)
        nb.run()
        nb.run_cell(parse(str(notebooks / "main.py"))[0].__class__(99, "python", "display(42)"))
