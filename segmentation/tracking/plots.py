"""Figures of a fit. The ``*_figure`` functions return a matplotlib ``Figure`` built without
pyplot (no backend chosen or changed, so a notebook shows it with ``display(fig)``); the
plain-named ones save that figure as a PNG (what the fit logs to MLflow) and return the path."""
from __future__ import annotations

import numpy as np


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=110)
    return path


def cv_curve(table, path: str, chosen: tuple | None = None, rule: str | None = None) -> str:
    """:func:`cv_curve_figure` saved to ``path``."""
    return _save(cv_curve_figure(table, chosen, rule), path)


def cv_curve_figure(table, chosen: tuple | None = None, rule: str | None = None):
    """Mean held-out deviance vs log(lambda), one line per alpha with SE bars (penalised fits),
    and dashed, the best relaxed blend at each lambda when the table has relaxed rows; the
    chosen (lambda, alpha[, relax]) marked."""
    fig = _figure((7.5, 4.8))
    ax = fig.subplots()
    relax = table["relax"] if "relax" in table.columns else np.ones(len(table))
    pen, rel = table[relax == 1.0], table[relax < 1.0]
    for i, (alpha, g) in enumerate(pen.groupby("alpha", sort=True)):
        g = g.sort_values("lambda")
        color = f"C{i % 10}"
        ax.errorbar(np.log10(g["lambda"]), g["mean_deviance"], yerr=g["se_deviance"], marker="o",
                    ms=3, capsize=2, lw=1, color=color, label=f"alpha={alpha:g}")
        r = rel[rel["alpha"] == alpha]
        if len(r):
            best = r.loc[r.groupby("lambda")["mean_deviance"].idxmin()].sort_values("lambda")
            ax.plot(np.log10(best["lambda"]), best["mean_deviance"], ls="--", lw=1, color=color,
                    label=f"alpha={alpha:g}, best relaxed")
    if chosen is not None:
        lam, alpha = chosen[0], chosen[1]
        g = chosen[2] if len(chosen) > 2 else 1.0
        row = table[(table["alpha"] == alpha) & np.isclose(table["lambda"], lam, rtol=1e-12, atol=0)
                    & (relax == g)]
        if len(row):
            ax.plot(np.log10(lam), row["mean_deviance"].iloc[0], marker="*", ms=16, color="k",
                    ls="none", label=f"chosen ({rule or 'rule'}): alpha={alpha:g}, lambda={lam:.3g}"
                                     + (f", relax {g:g}" if g < 1 else ""))
    ax.set_xlabel("log10(lambda)")
    ax.set_ylabel("mean held-out deviance (log loss per row)")
    ax.set_title("Cross-validation curve (bars: one standard error over folds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def gamma_heatmap(model, path: str) -> str:
    """:func:`gamma_heatmap_figure` saved to ``path``."""
    return _save(gamma_heatmap_figure(model), path)


def gamma_heatmap_figure(model):
    """gamma (segments x covariates, fitting scale, intercept excluded); exact zeros blank."""
    G = np.asarray(model.gamma_fit)[:, 1:]
    feats = list(model.features[1:])
    masked = np.ma.masked_where(G == 0.0, G)
    vmax = float(np.max(np.abs(G))) if G.size and np.any(G != 0) else 1.0
    fig = _figure((max(5.0, 0.6 * len(feats) + 2.5), max(2.5, 0.45 * len(model.segments) + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(masked, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(feats)), feats, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(model.segments)), model.segments, fontsize=8)
    if G.size <= 400:
        for j in range(G.shape[0]):
            for k in range(G.shape[1]):
                if G[j, k] != 0.0:
                    ax.text(k, j, f"{G[j, k]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax, label="gamma (standardised); blank = 0")
    ax.set_title(f"Segment effects gamma (lambda={model.lam:.3g}, alpha={model.alpha:g})")
    fig.tight_layout()
    return fig


def fusion_map(model, path: str) -> str:
    """:func:`fusion_map_figure` saved to ``path``."""
    return _save(fusion_map_figure(model), path)


def fusion_map_figure(model):
    """||beta_jk - gamma_j|| per creative (rows: segments, columns: creatives of the segment);
    0 = fused (exactly)."""
    dist = model.distances()
    m = len(model.segments)
    members = [[c for c in range(len(model.creatives)) if model.segment_of[c] == j] for j in range(m)]
    width = max(len(x) for x in members)
    M = np.full((m, width), np.nan)
    for j, cs in enumerate(members):
        for i, c in enumerate(cs):
            M[j, i] = dist[c]
    ev = getattr(model, "evidence", None) or {}
    flagged = set(ev.get("flagged", []))
    pvals = {s["segment"]: s["p_value"] for s in ev.get("segments", []) if s.get("p_value") is not None}
    fig = _figure((max(4.5, 1.1 * width + 2.5), max(2.5, 0.45 * m + 1.5)))
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(M), cmap="magma_r", vmin=0, aspect="auto")
    for j, cs in enumerate(members):
        bad = model.segments[j] in flagged
        for i, c in enumerate(cs):
            tag = ("fused!" if bad else "fused") if model.fused[c] else f"{dist[c]:.2f}"
            ax.text(i, j, f"{model.creatives[c]}\n{tag}", ha="center", va="center", fontsize=7,
                    color=("r" if bad and model.fused[c] else
                           "k" if dist[c] < 0.6 * np.nanmax(M + 1e-12) else "w"))
    labels = [f"{s}  (fusion p={pvals[s]:.2g}{', DIFFER' if s in flagged else ''})" if s in pvals else s
              for s in model.segments]
    ax.set_yticks(range(m), labels, fontsize=8)
    ax.set_xticks(range(width), [f"#{i + 1}" for i in range(width)], fontsize=8)
    fig.colorbar(im, ax=ax, label="||beta_jk - gamma_j|| (standardised scale)")
    ax.set_title("Fusion map: distance of each creative from its segment"
                 + ("\nred 'fused!': fused, but out of fold these creatives respond differently" if flagged else ""))
    fig.tight_layout()
    return fig


def calibration_plot(model, path: str) -> str:
    """:func:`calibration_figure` saved to ``path``."""
    return _save(calibration_figure(model), path)


def calibration_figure(model):
    """Out-of-fold calibration: left, the reliability diagram (deciles of predicted probability,
    observed vs predicted); right, per creative observed - predicted rate with its 95% CI."""
    ev = model.evidence or {}
    rel = ev.get("reliability", [])
    cr = [c for c in ev.get("creatives", []) if "difference" in c]
    fig = _figure((11, max(3.8, 0.28 * len(cr) + 1.5)))
    a1, a2 = fig.subplots(1, 2)
    if rel:
        pr = [b["predicted"] for b in rel]
        ob = [b["observed"] for b in rel]
        top = max(max(pr), max(ob)) * 1.05
        a1.plot([0, top], [0, top], color="0.6", lw=1)
        a1.plot(pr, ob, marker="o")
    a1.set_xlabel("mean predicted response (out of fold)")
    a1.set_ylabel("observed response rate")
    a1.set_title("Reliability (deciles of predicted probability)")
    a1.grid(alpha=0.3)
    flagged = set(ev.get("flagged", []))
    for i, c in enumerate(cr):
        lo, hi = c["difference_ci"]
        color = "r" if c["segment"] in flagged and c["fused"] else ("C0" if c["fused"] else "C1")
        a2.errorbar(100 * c["difference"], i, xerr=[[100 * (c["difference"] - lo)], [100 * (hi - c["difference"])]],
                    marker="o", color=color, capsize=2)
    a2.axvline(0, color="0.6", lw=1)
    a2.set_yticks(range(len(cr)), [f"{c['creative']} ({c['segment']}{', fused' if c['fused'] else ''})" for c in cr],
                  fontsize=7)
    a2.set_xlabel("observed - predicted response rate, points (95% CI)")
    a2.set_title("Per creative, out of fold")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def allocation_curve(allocation: dict, path: str) -> str:
    """:func:`allocation_curve_figure` saved to ``path``."""
    return _save(allocation_curve_figure(allocation), path)


def allocation_curve_figure(allocation: dict):
    """What coarseness costs: the value with at most S treatments (under the capacity limits) as a
    share of full personalization, S = 1..max_treatments; each point labelled with its offered
    set (``allocation``: the allocation.json content)."""
    plan = allocation["plan"]
    rows = [r for r in plan["curve"] if r.get("share_of_full") is not None]
    S = [r["S"] for r in rows]
    share = [100.0 * r["share_of_full"] for r in rows]
    fig = _figure((7.5, 4.5))
    ax = fig.subplots()
    ax.plot(S, share, marker="o", color="C0", label="sum of values / sum of each user's best value")
    for s, v, r in zip(S, share, rows):
        label = ", ".join(r.get("offered") or [])
        ax.annotate(label if len(label) < 40 else label[:37] + "...", (s, v), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)
    ax.axhline(100.0, color="0.6", lw=1, ls="--")
    ax.set_xticks(range(1, (max(S) if S else 1) + 1))
    ax.set_xlabel("S: number of treatments offered")
    ax.set_ylabel("share of full personalization, %")
    ax.set_title("Coarse personalization: value vs number of treatments")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
