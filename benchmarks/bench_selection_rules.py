"""Selection rules side by side on the two cases of the selection issue (in-memory oracle).

1. Base rates: one segment whose three creatives share their slopes but respond at about 33, 36
   and 39 % (35k users each), beside a segment of three alike creatives. What matters: does
   the rule fuse the three, and how far is each creative's out-of-fold predicted rate from its
   observed rate?
2. Planted truth: ``segment simulate``'s campaign (10 creatives in 4 segments, one deviant
   creative) at 200k users. What matters: which creatives stay unfused, and the adjusted Rand
   index of ``argmax_j gamma_j . x`` against the true segments.

Every rule runs on the same folds (5), alphas (0, 0.1, 0.2) and 20-lambda grids; "relaxed"
adds the relaxed refits (g in {0, .25, .5, .75, 1}) to the candidates, "adaptive" the adaptive
penalty (power 1, weights from each fold's initial fit).

    .venv/bin/python benchmarks/bench_selection_rules.py [--out benchmarks/results/selection_rules.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "selection")]

from base_rate_testdata import base_rate_campaign, oof_calibration  # noqa: E402
from cv_testdata import design, planted  # noqa: E402

from segmentation.selection.cv import cross_validate  # noqa: E402
from segmentation.selection.relax import RELAX_GRID  # noqa: E402

ALPHAS = [0.0, 0.1, 0.2]
VARIANTS = [("1se_unpaired", None, None), ("min", None, None), ("1se", None, None), ("1se", RELAX_GRID, None),
            ("1se", RELAX_GRID, 1.0)]


def name(rule, relax, adaptive):
    return (f"{rule}{' + relaxed' if relax else ''}{' + adaptive' if adaptive else ''}"
            + (" (default)" if rule == "1se" and relax and not adaptive else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="also write the tables (markdown) here")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    lines = []
    say = lambda s="": (print(s), lines.append(s))  # noqa: E731

    st, oracle, d = base_rate_campaign(35_000, seed=a.seed)
    say(f"### Base rates differ, slopes equal (6 creatives x 35k users; true rates "
        f"{', '.join(f'{100 * r:.1f}%' for r in d['rates'][:3])} in segment S)\n")
    say("| rule | chosen alpha, lambda index, g | unfused in S | out-of-fold predicted - observed, s1 / s2 / s3 (points) | max over all 6 | seconds |")
    say("|---|---|---|---|---|---|")
    for rule, relax, adaptive in VARIANTS:
        t0 = time.time()
        res = cross_validate(oracle, st, ALPHAS, n_lambda=20, rule=rule, progress=None, relax=relax,
                             adaptive=adaptive)
        cal = oof_calibration(res, d, st.n_creatives)
        unf = [st.creatives[c] for c in range(3) if not res.final_fit.fused[c]]
        say(f"| {name(rule, relax, adaptive)} | {res.chosen_alpha:g}, {res.chosen[1]}, {res.chosen_relax:g} | "
            f"{', '.join(unf) or 'none (all fused)'} | {cal[0]:+.2f} / {cal[1]:+.2f} / {cal[2]:+.2f} | "
            f"{np.abs(cal).max():.2f} | {time.time() - t0:.0f} |")

    from sklearn.metrics import adjusted_rand_score

    st, oracle, camp, levels = planted(200_000, seed=a.seed, n_folds=5, n_blocks=2)
    U = camp.users
    Z = np.column_stack([np.ones(len(U)), design(U, camp.truth, levels)])
    true = np.array([st.segments.index(s) for s in U["true_segment"]])
    say(f"\n### Planted truth, 200k users (deviant creative: {', '.join(camp.truth['deviant_creatives'])})\n")
    say("| rule | chosen alpha, lambda index, g | unfused creatives | adjusted Rand vs true segments | seconds |")
    say("|---|---|---|---|---|")
    for rule, relax, adaptive in VARIANTS:
        t0 = time.time()
        res = cross_validate(oracle, st, ALPHAS, n_lambda=20, rule=rule, progress=None, relax=relax,
                             adaptive=adaptive)
        f = res.final_fit
        ari = adjusted_rand_score(true, np.argmax(Z @ f.gamma.T, axis=1))
        unf = [st.creatives[c] for c in np.flatnonzero(~f.fused)]
        say(f"| {name(rule, relax, adaptive)} | {res.chosen_alpha:g}, {res.chosen[1]}, {res.chosen_relax:g} | "
            f"{', '.join(unf) or 'none'} | {ari:.3f} | {time.time() - t0:.0f} |")
    if a.out:
        with open(a.out, "w") as fh:
            fh.write("# Selection rules side by side\n\n`.venv/bin/python benchmarks/bench_selection_rules.py "
                     f"--seed {a.seed}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
