"""allocation.json, allocation.md and the value-vs-S curve (PNG); the printed summary; MLflow.

Files are rendered into the staging directory of ``segment allocate`` (published by one rename
with the assignment table); MLflow logging follows ``evaluation/report.py``: one
``MlflowClient.log_batch`` for params and metrics, the files as artifacts under ``allocation``.
"""
from __future__ import annotations

import json
import os

JSON_NAME = "allocation.json"
MD_NAME = "allocation.md"
PNG_NAME = "allocation_curve.png"
ASSIGNMENT_NAME = "assignment"


def _num(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _est(e: dict | None, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    if not e or e.get("estimate") is None:
        return "-"
    ci = ""
    if e.get("ci_low") is not None:
        ci = f" [{e['ci_low'] * scale:.{digits}g}, {e['ci_high'] * scale:.{digits}g}]"
    return f"{e['estimate'] * scale:.{digits}g}{unit}{ci}"


def markdown(result: dict) -> str:
    """Offered treatments with prices and shares against their limits, the curve, the held-out
    comparison."""
    from segmentation.transport.heldout import LABELS

    plan, vals = result["plan"], result["values"]
    src = (f"model {vals.get('model_dir')} ({'out-of-fold fold models' if vals.get('out_of_fold') else 'full fit'}), "
           f"users from {vals.get('users')}" if vals["kind"] == "model" else f"value table {vals.get('path')}")
    lines = [
        "# Coarse personalization",
        "",
        f"{plan['n_users']:,} users, {len(vals['treatments'])} candidate treatments, at most "
        f"{result['max_treatments']} offered. Values: {src}.",
        "",
        f"Total value {_num(plan['total_value'], 8)} (mean {_num(plan['mean_value'], 6)} per user), "
        f"{_num(100 * plan['share_of_full'] if plan.get('share_of_full') is not None else None)}% of full "
        f"personalization ({_num(plan['full_value'], 8)}); duality gap {_num(plan['duality_gap'], 3)}.",
        "",
        "| treatment | users | share | min share | max share | price |",
        "|---|---|---|---|---|---|",
    ]
    for t in plan["offered"]:
        lim = result["limits"][t]
        lines.append(f"| {t} | {lim['users']:,} | {lim['share']:.4%} | {lim['min_share']:g} | "
                     f"{lim['max_share']:g} | {_num(plan['prices'][t])} |")
    lines += ["", "Value with at most S treatments (share of full personalization, in-sample values):", "",
              "| S | offered | value | share of full |", "|---|---|---|---|"]
    for r in plan["curve"]:
        share = r.get("share_of_full")
        lines.append(f"| {r['S']} | {', '.join(r.get('offered') or []) or '-'} | {_num(r.get('value'), 8)} | "
                     f"{'-' if share is None else f'{100 * share:.2f}%'} |")
    ho = result.get("heldout")
    if ho:
        lines += ["", "## Held-out value (cross-fitted, doubly robust, 95% CI clustered by user)", "",
                  f"{ho['n_users']:,} users, {int(ho['n_exposures']):,} randomized exposures; every user's "
                  "values and decisions come from fold models that did not see them. Value per exposure = "
                  f"{ho['value_per_response']:g} x response rate - cost.", "",
                  "| policy | value per exposure | response rate | allocation minus policy |",
                  "|---|---|---|---|"]
        for P, row in ho["policies"].items():
            diff = ho["allocation_minus"].get(P)
            lines.append(f"| {LABELS.get(P, P)} | {_est(row['value'])} | {_est(row['response_rate'], 100, 4, '%')} | "
                         f"{_est(diff) if diff else '0'} |")
        if ho.get("share_of_full"):
            lines += ["", f"Share of full personalization's gain over random recouped by the allocation "
                          f"(held out): {_est(ho['share_of_full'], 100, 4, '%')}."]
    lines += ["", f"Assignment table: {result['assignment']['path']} ({result['assignment']['rows']:,} rows: "
                  f"{', '.join(result['assignment']['columns'])})."]
    return "\n".join(lines) + "\n"


def write_files(result: dict, stage: str) -> dict[str, str]:
    """allocation.json, allocation.md, allocation_curve.png into ``stage`` (published later)."""
    from segmentation.tracking.plots import allocation_curve

    paths = {name: os.path.join(stage, name) for name in (JSON_NAME, MD_NAME, PNG_NAME)}
    with open(paths[JSON_NAME], "w") as fh:
        json.dump(result, fh, indent=2, allow_nan=False)
    with open(paths[MD_NAME], "w") as fh:
        fh.write(markdown(result))
    allocation_curve(result, paths[PNG_NAME])
    return paths


def flat_metrics(result: dict) -> list[tuple[str, float, int]]:
    """(name, value, step): the plan's totals, each offered treatment's share and price, the curve
    (step = S) and the held-out estimates with their CI bounds."""
    import math

    from segmentation.tracking.mlflow_run import _metric_name

    plan = result["plan"]
    out = [("allocation.total_value", plan["total_value"], 0), ("allocation.mean_value", plan["mean_value"], 0),
           ("allocation.duality_gap", plan["duality_gap"], 0), ("allocation.full_value", plan["full_value"], 0),
           ("allocation.share_of_full", plan.get("share_of_full"), 0), ("allocation.n_users", plan["n_users"], 0),
           ("allocation.offered", len(plan["offered"]), 0), ("allocation.seconds", result["seconds"], 0)]
    if plan.get("spark_jobs") is not None:
        out.append(("allocation.spark_jobs", plan["spark_jobs"], 0))
    for t in plan["offered"]:
        out += [(f"allocation.share.{_metric_name(t)}", plan["shares"][t], 0),
                (f"allocation.price.{_metric_name(t)}", plan["prices"][t], 0)]
    for r in plan["curve"]:
        out += [("allocation.curve_value", r.get("value"), r["S"]),
                ("allocation.curve_share_of_full", r.get("share_of_full"), r["S"])]
    ho = result.get("heldout")

    def put(name, e):
        if e and e.get("estimate") is not None:
            out.append((name, e["estimate"], 0))
            if e.get("ci_low") is not None:
                out.extend([(name + "_ci_low", e["ci_low"], 0), (name + "_ci_high", e["ci_high"], 0)])

    if ho:
        for P, row in ho["policies"].items():
            put(f"heldout.{P}.value_dr", row["value"])
            put(f"heldout.{P}.response_rate_dr", row["response_rate"])
        for P, e in ho["allocation_minus"].items():
            put(f"heldout.allocation_minus_{P}_dr", e)
        put("heldout.share_of_full_dr", ho.get("share_of_full"))
    return [(k, float(v), int(s)) for k, v, s in out if v is not None and math.isfinite(float(v))]


def log_to_mlflow(cfg, result: dict, paths: dict[str, str]) -> str:
    """A new run (tag ``segmentation.kind = allocate`` and the config's ``mlflow.tags``) in
    ``mlflow.experiment``: the transport section as params, ``flat_metrics``, the three files under ``allocation``; returns its id."""
    import time

    from mlflow.entities import Metric, Param, RunStatus, RunTag

    from segmentation.evaluation.report import tracking_uri
    from segmentation.tracking.local_store import open_experiment
    from segmentation.tracking.mlflow_run import _clip

    client, exp_id = open_experiment(tracking_uri(cfg), cfg.mlflow.experiment)  # safe beside concurrent runs
    vals = result["values"]
    tags = [RunTag("segmentation.kind", "allocate"), RunTag("segmentation.values", vals["kind"]),
            RunTag("segmentation.allocation_dir", result["output_dir"])]
    if vals.get("model_run_id"):
        tags.append(RunTag("segmentation.model_run_id", str(vals["model_run_id"])))
    tags += [RunTag(k, str(v)) for k, v in (cfg.mlflow.tags or {}).items()]   # as on fit runs (airflow.ds, ...)
    run = client.create_run(exp_id, run_name=cfg.mlflow.run_name or f"allocate S<={result['max_treatments']}",
                            tags={t.key: t.value for t in tags})
    run_id = run.info.run_id
    try:
        params = {f"transport.{k}": _clip(v) for k, v in cfg.transport.model_dump().items()}
        params.update({"values.kind": vals["kind"], "values.source": _clip(vals.get("path") or vals.get("users")),
                       "allocation.offered": _clip(",".join(result["plan"]["offered"]))})
        ts = int(time.time() * 1000)
        P = [Param(k, str(v)) for k, v in params.items()]
        M = [Metric(k, v, ts, s) for k, v, s in flat_metrics(result)]
        for i in range(0, max(len(M), len(P), 1), 90):
            client.log_batch(run_id, metrics=M[i:i + 90], params=P[i:i + 90])
        for p in paths.values():
            client.log_artifact(run_id, p, artifact_path="allocation")
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    return run_id
