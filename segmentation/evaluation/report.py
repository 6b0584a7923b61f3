"""evaluation.json, evaluation.md and the bar chart, written atomically; MLflow logging."""
from __future__ import annotations

import json
import logging
import os
import tempfile

log = logging.getLogger(__name__)

JSON_NAME = "evaluation.json"
MD_NAME = "evaluation.md"
PNG_NAME = "evaluation_policies.png"

LABELS = {
    "segment": "segment (this model)",
    "segment_best": "segment, best creative",
    "personalized": "personalized (ceiling)",
    "per_segment_models": "per-segment models",
    "kmeans": "K-means on covariates",
    "best_single": "best single creative",
    "random": "random (uniform)",
}


def _pct(e: dict | None, digits: int = 2, unit: str = "%") -> str:
    if not e or e.get("estimate") is None:
        return "-"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    ci = f" [{lo * 100:.{digits}f}, {hi * 100:.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{e['estimate'] * 100:.{digits}f}{unit}{ci}"


def _num(e: dict | None, digits: int = 4) -> str:
    if not e or e.get("estimate") is None:
        return "-"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    ci = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{e['estimate']:.{digits}f}{ci}"


def markdown(result: dict) -> str:
    """The human-readable report: policy values and lifts (95% CIs), recoup share, uplift,
    targeting, diagnostics."""
    s = result["summary"]
    lines = [
        "# Policy evaluation",
        "",
        f"Off-policy, cross-fitted over {result['n_folds']} user folds: every user's decision and "
        "direct-model prediction come from a model that did not see that user. "
        f"{s['n_users']:,} users, {int(s['n_rows']):,} exposures. Values are response rates per "
        "exposure; 95% intervals are clustered by user; lifts are paired differences over "
        "`random`.",
        "",
        "| policy | DR value | DR lift over random (percentage points) | IPW value | SNIPW value |",
        "|---|---|---|---|---|",
    ]
    for P, row in s["policies"].items():
        lines.append(f"| {LABELS.get(P, P)} | {_pct(row['value'].get('dr'))} | "
                     f"{_pct(row['lift'].get('dr'), unit=' pp') if row['lift'] else '0 (baseline)'} | "
                     f"{_pct(row['value'].get('ipw'))} | {_pct(row['value'].get('snipw'))} |")
    rs = s.get("recoup_share") or {}
    if rs:
        lines += ["", "Share of `personalized`'s lift over `random` that `segment` recoups: "
                  f"DR {_pct(rs.get('dr'), 1)}, IPW {_pct(rs.get('ipw'), 1)}, "
                  f"SNIPW {_pct(rs.get('snipw'), 1)}."]
    sm = s.get("segment_minus") or {}
    if sm:
        lines += ["", "`segment` minus each alternative (paired over users, DR): " + ", ".join(
            f"{LABELS.get(P, P)} {_pct(v.get('dr'), unit=' pp')}" for P, v in sm.items()) + "."]
    if "uplift" in s:
        u = s["uplift"]
        lines += ["", "## Uplift over the control arm", "",
                  "Members = users the (out-of-fold) model assigns to the segment. Predicted uplift = "
                  "mean over the segment's creatives of predicted P(response) minus the control's "
                  "(its CI, like the sleeping-dog share's, is over users with the cross-fitted "
                  "models held fixed); DR uplift = doubly robust estimate of showing the segment's creatives vs control "
                  "to its members; sleeping dogs = members with negative predicted uplift.", "",
                  "| segment | share of exposures | predicted uplift | DR uplift | sleeping dogs |",
                  "|---|---|---|---|---|"]
        for name, r in u["segments"].items():
            lines.append(f"| {name} | {_pct(r['share_of_rows'], 1)} | {_pct(r['predicted_uplift'], unit=' pp')} | "
                         f"{_pct(r['dr_uplift'], unit=' pp')} | {_pct(r['share_negative'], 1)} |")
        o = u["overall"]
        lines.append(f"| all users | 100% | {_pct(o['predicted_uplift'], unit=' pp')} | {_pct(o['dr_uplift'], unit=' pp')} | "
                     f"{_pct(o['share_negative'], 1)} |")
        lines += ["", "Predicted sleeping dogs are a plug-in (model-based) classification; their "
                  f"DR-estimated uplift (are they really hurt by treatment?): "
                  f"{_pct(o.get('dr_uplift_of_predicted_negative'), unit=' pp')}."]
        t = s["targeting"]
        lines += ["", "## Breakeven targeting", "",
                  f"Treat a user (with their segment's creatives) only when value x predicted uplift > "
                  f"cost; value per response {t['value_per_response']:g}, cost per contact "
                  f"{t['cost_per_contact']:g}. Expected profit per user-exposure (DR):", "",
                  "| policy | profit |", "|---|---|",
                  f"| targeting | {_num(t['profit']['target'])} |",
                  f"| treat everyone | {_num(t['profit']['everyone'])} |",
                  f"| treat no one | {_num(t['profit']['no_one'])} |",
                  f"| targeting - everyone | {_num(t['target_minus_everyone'])} |",
                  f"| targeting - no one | {_num(t['target_minus_no_one'])} |",
                  "", f"Share targeted: {_pct(t['share_targeted'], 1)}."]
    d = result.get("diagnostics", {})
    lines += ["", "## Diagnostics", "", f"- propensities: {d.get('propensity_source')}"]
    for w in d.get("warnings", []):
        lines.append(f"- WARNING: {w}")
    cf = d.get("crossfit", {})
    if cf:
        lines.append(f"- cross-fitting: {cf.get('problems')} fold models in {cf.get('passes')} shared "
                     f"data passes ({cf.get('seconds', 0):.1f}s); all converged: {cf.get('all_converged')}")
    lines.append(f"- model: lambda={result['model']['lambda']:g}, alpha={result['model']['alpha']:g}")
    return "\n".join(lines) + "\n"


def bar_chart(result: dict, path: str) -> None:
    """:func:`bar_chart_figure` saved to ``path`` (PNG)."""
    bar_chart_figure(result).savefig(path, dpi=110)


def bar_chart_figure(result: dict):
    """Bar chart of the DR value of each policy with 95% CI whiskers: a matplotlib ``Figure``
    built without pyplot, so no backend is chosen or changed (a notebook's inline display keeps
    working) and nothing is left in pyplot's figure registry."""
    from matplotlib.figure import Figure

    pol = result["summary"]["policies"]
    names = [p for p in pol if pol[p]["value"].get("dr", {}).get("estimate") is not None]
    vals = [pol[p]["value"]["dr"]["estimate"] * 100 for p in names]
    lo = [v - pol[p]["value"]["dr"]["ci_low"] * 100 for p, v in zip(names, vals)]
    hi = [pol[p]["value"]["dr"]["ci_high"] * 100 - v for p, v in zip(names, vals)]
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    colors = ["tab:blue" if p == "segment" else "tab:gray" if p == "random" else "tab:orange"
              for p in names]
    ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=5, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([LABELS.get(p, p) for p in names], rotation=30, ha="right")
    ax.set_ylabel("response rate, % (DR, 95% CI)")
    ax.set_title("Policy value, cross-fitted off-policy estimate")
    if vals:
        ax.set_ylim(0.0, 1.1 * max(v + h for v, h in zip(vals, hi)))   # bars start at zero
        for i, v in enumerate(vals):
            ax.text(i, v / 2, f"{v:.1f}", ha="center", va="center", color="white", fontsize=9)
    fig.tight_layout()
    return fig


def write_outputs(result: dict, out_dir: str) -> dict[str, str]:
    """Write the three files: each rendered into a temp file in ``out_dir`` first, then all
    renamed into place (nothing is renamed unless all three rendered)."""
    os.makedirs(out_dir, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for name in (JSON_NAME, MD_NAME, PNG_NAME):
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp-", suffix="-" + name)
            os.close(fd)
            temps[name] = tmp
        with open(temps[JSON_NAME], "w") as fh:
            json.dump(result, fh, indent=2, allow_nan=False)
        with open(temps[MD_NAME], "w") as fh:
            fh.write(markdown(result))
        bar_chart(result, temps[PNG_NAME])
        umask = os.umask(0)
        os.umask(umask)
        paths = {}
        for name, tmp in temps.items():
            os.chmod(tmp, 0o666 & ~umask)          # mkstemp creates 0600; give normal file modes
            final = os.path.join(out_dir, name)
            os.replace(tmp, final)
            paths[name] = final
        return paths
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def tracking_uri(cfg) -> str:
    """The fit's resolver (``segmentation/tracking/uri.py``): mlflow.tracking_uri, else
    MLFLOW_TRACKING_URI, else the platform's default (Databricks), else sqlite:///<cwd>/mlflow.db."""
    from segmentation.tracking.uri import resolve_tracking_uri

    return resolve_tracking_uri(getattr(getattr(cfg, "mlflow", None), "tracking_uri", None))


def check_tracking(cfg, run_id: str | None) -> bool:
    """Before any work (``segment evaluate``): resolve the URI (logged), bound the HTTP retries,
    probe the store and check ``run_id`` exists. Returns whether to log; an unreachable store
    raises ``TrackingUnavailable`` (exit 3), or with ``mlflow.required: false`` warns once and
    returns False."""
    from segmentation.errors import TrackingUnavailable
    from segmentation.tracking.server import bound_http_client, one_line, probe, transport_errors
    from segmentation.tracking.uri import resolve_tracking

    target = resolve_tracking(getattr(cfg.mlflow, "tracking_uri", None))
    bound_http_client(target)
    try:
        probe(target)
        if run_id is not None:
            check_run(cfg, run_id)
        else:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=target.uri).search_experiments(max_results=1)
    except TrackingUnavailable as err:
        msg = str(err)
    except transport_errors() as err:
        msg = f"MLflow tracking store {target.uri} cannot be reached ({one_line(err)})"
    else:
        return True
    if getattr(cfg.mlflow, "required", True):
        raise TrackingUnavailable(f"{msg}; nothing was evaluated (start the server, fix "
                                  "mlflow.tracking_uri, or set mlflow.required: false)")
    log.warning("%s; evaluating without MLflow logging (mlflow.required is false)", msg)
    return False


def log_evaluation(cfg, result: dict, paths: dict[str, str], run_id: str | None = None) -> str | None:
    """``log_to_mlflow`` for ``segment evaluate``, after the files are written (``guarded_logging``)."""
    return guarded_logging(cfg, log_to_mlflow, cfg, result, paths, run_id,
                           what="the evaluation metrics and files" + (f" of run {run_id}" if run_id else ""),
                           written=os.path.dirname(next(iter(paths.values()), "")))


def guarded_logging(cfg, fn, *args, what: str, written: str | None = None):
    """``fn(*args)`` (an MLflow logging step after the outputs are written): a store lost on the
    way raises ``TrackingIncomplete`` (exit 4) naming the URI and what was not logged or, with
    ``mlflow.required: false``, warns once and returns None."""
    from segmentation.errors import TrackingIncomplete
    from segmentation.tracking.server import one_line, transport_errors

    try:
        return fn(*args)
    except transport_errors() as err:
        msg = (f"MLflow logging to {tracking_uri(cfg)} failed ({one_line(err)}); not logged: {what}. "
               f"The outputs were written{' to ' + written if written else ''}")
        if getattr(cfg.mlflow, "required", True):
            raise TrackingIncomplete(msg) from None
        log.warning("%s (mlflow.required is false)", msg)
        return None


def flat_metrics(result: dict) -> dict[str, float]:
    """Metric name -> value: DR/IPW/SNIPW value and lift (with CI bounds) per policy, recoup
    share, targeting profits."""
    s = result["summary"]
    out: dict[str, float] = {}

    def put(prefix, e):
        if e and e.get("estimate") is not None:
            out[prefix] = e["estimate"]
            if e.get("ci_low") is not None:
                out[prefix + "_ci_low"] = e["ci_low"]
                out[prefix + "_ci_high"] = e["ci_high"]

    for P, row in s["policies"].items():
        for est, e in row["value"].items():
            put(f"eval.{P}.value_{est}", e)
        for est, e in row["lift"].items():
            put(f"eval.{P}.lift_{est}", e)
    for est, e in (s.get("recoup_share") or {}).items():
        put(f"eval.recoup_share_{est}", e)
    for P, ests in (s.get("segment_minus") or {}).items():
        put(f"eval.segment_minus_{P}_dr", ests.get("dr"))
    if "targeting" in s:
        t = s["targeting"]
        for k, e in t["profit"].items():
            put(f"eval.profit.{k}", e)
        put("eval.share_targeted", t["share_targeted"])
    return out


def check_run(cfg, run_id: str) -> None:
    """Fail early (before any work) when the MLflow run to log to does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from segmentation.errors import ConfigError

    try:
        run = MlflowClient(tracking_uri=tracking_uri(cfg)).get_run(run_id)
    except MlflowException as e:
        raise ConfigError(f"MLflow run {run_id!r} not found at {tracking_uri(cfg)}: {e}") from None
    if run.info.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow run {run_id!r} is deleted")


def log_to_mlflow(cfg, result: dict, paths: dict[str, str], run_id: str | None = None) -> str:
    """Log metrics and the three files (artifact path ``evaluation``) to ``run_id`` with
    MlflowClient, or to a new run in ``cfg.mlflow.experiment`` tagged ``segmentation.kind =
    evaluate`` and with the config's ``mlflow.tags``; returns the run id."""
    import time

    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    created = False
    if run_id is None:
        from segmentation.tracking.local_store import open_experiment

        name = getattr(cfg.mlflow, "experiment", "creative-segmentation")
        client, exp_id = open_experiment(tracking_uri(cfg), name)   # safe beside concurrent runs
        tags = {"segmentation.kind": "evaluate", **(getattr(cfg.mlflow, "tags", None) or {})}
        run = client.create_run(exp_id, run_name=(getattr(cfg.mlflow, "run_name", None) or "evaluate"),
                                tags=tags)                 # mlflow.tags as on fit runs (airflow.ds, ...)
        run_id = run.info.run_id
        created = True
    else:
        client = MlflowClient(tracking_uri=tracking_uri(cfg))
    ts = int(time.time() * 1000)
    metrics = [Metric(k, float(v), ts, 0) for k, v in flat_metrics(result).items()]
    params = [] if not created else [Param("eval.n_folds", str(result["n_folds"])),
                                     Param("eval.propensity_source", str(result["diagnostics"]["propensity_source"])[:250])]
    for i in range(0, len(metrics), 900):
        client.log_batch(run_id, metrics=metrics[i:i + 900], params=params if i == 0 else [])
    if not metrics and params:
        client.log_batch(run_id, params=params)
    for p in paths.values():
        client.log_artifact(run_id, p, artifact_path="evaluation")
    if created:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
