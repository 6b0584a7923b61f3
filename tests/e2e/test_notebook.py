"""The quickstart notebook's code cells run top to bottom (against the test session)."""
import json
import os

import pytest

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "..", "notebooks", "quickstart.ipynb")


@pytest.mark.slow
def test_quickstart_notebook_runs(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = json.load(open(NOTEBOOK))
    scope: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            src = "".join(cell["source"]).replace("/tmp/seg-notebook", str(tmp_path))
            exec(compile(src, "quickstart.ipynb", "exec"), scope)
    assert scope["model"].fit["converged"]
