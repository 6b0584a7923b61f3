"""Saving the report figures (evaluation bar chart, allocation curve) must not touch matplotlib's
global state: no backend switch (a notebook's inline backend keeps working) and no figure left in
pyplot's registry. Run in a fresh interpreter whose backend is set to ``svg`` beforehand."""
from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys
    import matplotlib
    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    from segmentation.evaluation.report import bar_chart, bar_chart_figure
    from segmentation.tracking.plots import allocation_curve, allocation_curve_figure

    e = lambda v: {"estimate": v, "ci_low": v - 0.01, "ci_high": v + 0.01}
    evaluation = {"summary": {"policies": {p: {"value": {"dr": e(v)}, "lift": {}}
                                           for p, v in (("segment", 0.2), ("random", 0.12))}}}
    allocation = {"plan": {"curve": [{"S": 1, "offered": ["a"], "value": 1.0, "share_of_full": 0.5},
                                     {"S": 2, "offered": ["a", "b"], "value": 1.8, "share_of_full": 0.9}]}}
    out = sys.argv[1]
    bar_chart(evaluation, out + "/bars.png")
    allocation_curve(allocation, out + "/curve.png")
    fig1, fig2 = bar_chart_figure(evaluation), allocation_curve_figure(allocation)
    assert fig1.axes[0].get_title().startswith("Policy value"), fig1.axes[0].get_title()
    assert fig2.axes[0].get_title().startswith("Coarse personalization"), fig2.axes[0].get_title()
    print(matplotlib.get_backend(), plt.get_fignums())
''')


def test_report_figures_keep_the_backend_and_pyplot_empty(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["svg", "[]"], r.stdout
    for name in ("bars.png", "curve.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
