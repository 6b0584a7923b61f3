"""The MLflow run tree of one ``segment fit``.

- Tracking URI: ``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the platform's
  default (Databricks), else ``sqlite:///<cwd>/mlflow.db`` (``tracking/uri.py``). A new
  experiment on a sqlite store keeps its artifacts in ``mlartifacts/`` beside the database file.
  Reaching the store (bounded retries, probe, what happens when it goes away) is
  ``tracking/session.py``.
- Parent run (one per fit): the flattened config as params, data facts (``data.*`` facts as
  params and metrics), tags (data path, date, kind, and ``mlflow.tags`` from the config, e.g.
  ``airflow.ds`` and ``airflow.run_id`` from the example DAG) and a run name with the data path
  and date.
- One nested child per (alpha, lambda) grid point: params lambda, alpha, lambda_index; metrics
  ``heldout_deviance`` and ``heldout_auc`` at step = fold index, their ``mean_*`` and ``se_*``,
  ``fused_creatives``, ``gamma_nonzero``, ``iterations``, ``passes``, ``residual``; tag
  ``chosen``. Each child is three store calls (create, ``log_batch``, terminate).
- Parent artifacts: ``model.json``, ``cv_table.csv``, ``plots/cv_curve.png``,
  ``plots/gamma_heatmap.png``, ``plots/fusion_map.png`` and the pyfunc model under ``model/``
  (models from code: ``pyfunc_model.py`` + the JSON coefficients; nothing pickled).

Everything goes through ``MlflowClient`` with an explicit run id: no global active run, so a
notebook's own runs are left alone.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import tempfile
import time

import numpy as np

from segmentation.tracking.local_store import open_experiment
from segmentation.tracking.uri import resolve_tracking_uri  # noqa: F401 - the one resolver

PYFUNC_CODE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyfunc_model.py")
MODEL_ARTIFACT = "model"


def _artifact_location(uri: str) -> str | None:
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlartifacts")
    return None


def _clip(v, n: int = 500) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 3] + "..."


class FitTracker:
    """One parent run; create it before the fit (so a failure is recorded as FAILED)."""

    def __init__(self, cfg, *, kind: str = "fit"):
        from segmentation.config import flatten

        t0 = time.time()
        self.uri = resolve_tracking_uri(cfg.mlflow.tracking_uri)
        # a new sqlite store is created (migrated) by one run at a time (tracking/local_store.py)
        self.client, self.experiment_id = open_experiment(self.uri, cfg.mlflow.experiment,
                                                          _artifact_location(self.uri))
        now = _dt.datetime.now(_dt.timezone.utc)
        source = cfg.data.exposures
        short = "/".join(os.path.normpath(source).split(os.sep)[-2:]) or source
        run_name = cfg.mlflow.run_name or f"{kind} {short} {now:%Y-%m-%d %H:%M}"
        tags = {"segmentation.kind": kind, "segmentation.data_path": source,
                "segmentation.date": now.strftime("%Y-%m-%d"),
                "segmentation.model_dir": os.path.abspath(cfg.output.model_dir),
                "segmentation.selection": "single" if cfg.model.single else f"cv-{cfg.cv.rule}"}
        tags.update(cfg.mlflow.tags)         # e.g. airflow.ds / airflow.run_id from the DAG
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.run_name = run_name
        self._log(params={k: _clip(v) for k, v in flatten(cfg).items()})
        self.timings = {"start": time.time() - t0}

    # ---- low level ------------------------------------------------------------------------
    def _log(self, run_id=None, params=None, metrics=None, tags=None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        run_id = run_id or self.run_id
        ts = int(time.time() * 1000)
        P = [Param(k, _clip(v)) for k, v in (params or {}).items()]
        M = [Metric(k, float(v), ts, int(step)) for k, v, step in (metrics or []) if _finite(v)]
        T = [RunTag(k, _clip(v, 5000)) for k, v in (tags or {}).items()]
        # log_batch limits: 100 params, 100 tags, 1000 entities in all per call
        n = max(math.ceil(len(P) / 100), math.ceil(len(T) / 100), math.ceil(len(M) / 800), 1)
        for i in range(n):
            self.client.log_batch(run_id, metrics=M[i * 800:(i + 1) * 800],
                                  params=P[i * 100:(i + 1) * 100], tags=T[i * 100:(i + 1) * 100])

    # ---- what a fit logs ----------------------------------------------------------------------
    def log_data(self, prepared) -> None:
        rep, enc, st = prepared.report, prepared.encoding, prepared.structure
        facts = {"rows": rep.n_rows, "users": rep.n_users, "creatives": st.n_creatives,
                 "segments": st.n_segments, "covariates_encoded": enc.n_features - 1,
                 "folds": prepared.n_folds,
                 "positives": int(np.asarray(prepared.manifest.positives).sum())}
        self._log(params={f"data.{k}": v for k, v in facts.items()},
                  metrics=[(f"data_{k}", v, 0) for k, v in facts.items()],
                  tags={"segmentation.features": ",".join(enc.feature_names),
                        "segmentation.block_store": getattr(prepared, "store", ""),
                        "segmentation.block_store_reason": getattr(prepared, "store_reason", "")})

    def _log_child(self, r: dict, F: int, chosen: bool = False) -> str:
        tags = {"mlflow.parentRunId": self.run_id, "segmentation.kind": "grid-point",
                "chosen": str(bool(chosen)).lower()}
        if r["warning"]:
            tags["warning"] = r["warning"]
        child = self.client.create_run(
            self.experiment_id, tags=tags,
            run_name=f"alpha={r['alpha']:g} lambda[{int(r['lambda_index'])}]={r['lambda']:.4g}")
        metrics = []
        for f in range(F):
            metrics.append(("heldout_deviance", r[f"deviance_fold{f}"], f))
            metrics.append(("heldout_auc", r[f"auc_fold{f}"], f))
        for k, col in (("mean_heldout_deviance", "mean_deviance"), ("se_heldout_deviance", "se_deviance"),
                       ("mean_heldout_auc", "mean_auc"), ("se_heldout_auc", "se_auc"),
                       ("fused_creatives", "fused"), ("gamma_nonzero", "gamma_nonzero"),
                       ("iterations", "iterations"), ("passes", "passes"), ("residual", "residual"),
                       ("lambda_ratio", "lambda_ratio")):
            metrics.append((k, r[col], 0))
        self._log(child.info.run_id,
                  params={"lambda": repr(float(r["lambda"])), "alpha": repr(float(r["alpha"])),
                          "lambda_index": int(r["lambda_index"]), "folds": F},
                  metrics=metrics)
        self.client.set_terminated(child.info.run_id, "FINISHED")
        return child.info.run_id

    def start_children(self, n_folds: int) -> "ChildLogger":
        """A callable for ``cross_validate(on_point=...)``: logs each grid point's child run
        from a background thread while Spark computes the next lambda."""
        self._children = ChildLogger(self, n_folds)
        return self._children

    def log_cv(self, cv, structure) -> float:
        """Make sure every grid point has its child run (those the background logger did not
        log are logged now), tag the chosen one; returns the seconds spent here after the CV."""
        t0 = time.time()
        F = cv.n_folds
        logger = getattr(self, "_children", None)
        done: dict = {}
        if logger is not None:
            done = logger.close()
            if logger.error is not None:
                import logging

                # INFO: a lost store is reported once, at the end (tracking/session.py)
                logging.getLogger(__name__).info("background MLflow logging failed (%r); "
                                                 "logging the remaining grid points now", logger.error)
            self.timings["children_background"] = logger.busy
        table = cv.table(structure)
        relaxed: dict = {}
        for _, r in table.iterrows():
            if int(r["lambda_index"]) < 0:            # an alpha that reached no lambda
                self.client.set_tag(self.run_id, f"stopped.alpha={r['alpha']:g}", _clip(r["warning"], 5000))
                continue
            key = (int(r["alpha_index"]), int(r["lambda_index"]))
            g = float(r.get("relax", 1.0))
            if g < 1.0:
                relaxed.setdefault(key, []).append(r)
            if key in done:
                if bool(r["chosen"]):
                    self.client.set_tag(done[key], "chosen", "true")
                    self.client.set_tag(done[key], "chosen_relax", repr(g))
                continue
            done[key] = self._log_child(r.to_dict(), F, chosen=bool(r["chosen"]) and g == 1.0)
        # the relaxed blends of each grid point: metrics on its child run (step = fold)
        for key, rows in relaxed.items():
            metrics = []
            for r in rows:
                tag = f"relax_{float(r['relax']):g}"
                metrics.append((f"{tag}.mean_heldout_deviance", r["mean_deviance"], 0))
                metrics += [(f"{tag}.heldout_deviance", r[f"deviance_fold{f}"], f) for f in range(F)]
            self._log(run_id=done[key], metrics=metrics)
        secs = time.time() - t0
        self.timings["children"] = secs
        self.timings["n_children"] = len(done)
        self.child_runs = done
        return secs

    def log_results(self, model, model_dir: str, cv=None, structure=None, extra_metrics=None) -> None:
        """Parent metrics and artifacts: model.json, CV table, plots, pyfunc model."""
        from segmentation.tracking import plots

        t0 = time.time()
        f = model.fit
        metrics = [("objective", f.get("objective"), 0), ("optimality_residual", f.get("optimality_residual"), 0),
                   ("iterations", f.get("iterations"), 0), ("passes", f.get("passes"), 0),
                   ("fused_creatives", int(np.sum(model.fused)), 0),
                   ("gamma_nonzero", int(np.count_nonzero(np.asarray(model.gamma_fit)[:, 1:])), 0)]
        params = {"chosen.lambda": repr(float(model.lam)), "chosen.alpha": repr(float(model.alpha))}
        if cv is not None and cv.chosen is not None:
            pt = cv.chosen_candidate
            metrics += [("cv_mean_heldout_deviance", pt.mean_deviance, 0),
                        ("cv_se_heldout_deviance", pt.se_deviance, 0),
                        ("cv_mean_heldout_auc", pt.mean_auc, 0), ("cv_passes", cv.passes, 0),
                        ("cv_seconds", cv.seconds, 0)]
            if cv.jobs is not None:
                metrics.append(("cv_spark_jobs", cv.jobs, 0))
            params["chosen.rule"] = cv.rule
            params["chosen.lambda_index"] = int(cv.chosen[1])
            params["chosen.relax"] = repr(float(cv.chosen_relax))
        ev = model.evidence
        if ev:
            metrics.append(("calibration_max_abs_difference", ev.get("max_abs_difference"), 0))
            metrics.append(("fusion_flagged_segments", len(ev.get("flagged", [])), 0))
            tested = [sg for sg in ev.get("segments", []) if sg.get("p_value") is not None]
            keys = metric_keys([sg["segment"] for sg in tested])
            for sg in tested:
                metrics.append((f"fusion_test_p.{keys[sg['segment']]}", sg["p_value"], 0))
            # the original segment names behind the sanitised keys (model.json has them too)
            key_names = {f"fusion_test_p.{keys[n]}": n for n in keys}
        metrics += [(k, v, 0) for k, v in (extra_metrics or {}).items()]
        self._log(params=params, metrics=metrics)
        if ev and key_names:
            self.client.log_dict(self.run_id, key_names, "mlflow_metric_names.json")
        with tempfile.TemporaryDirectory(prefix="segmentation-mlflow-") as tmp:
            plot_dir = os.path.join(tmp, "plots")
            os.makedirs(plot_dir)
            if cv is not None and cv.chosen is not None:
                plots.cv_curve(cv.table(structure), os.path.join(plot_dir, "cv_curve.png"),
                               chosen=(cv.chosen_lambda, cv.chosen_alpha, cv.chosen_relax), rule=cv.rule)
            plots.gamma_heatmap(model, os.path.join(plot_dir, "gamma_heatmap.png"))
            plots.fusion_map(model, os.path.join(plot_dir, "fusion_map.png"))
            if model.evidence:
                plots.calibration_plot(model, os.path.join(plot_dir, "calibration.png"))
            self.client.log_artifacts(self.run_id, plot_dir, "plots")
            for name in sorted(os.listdir(model_dir)):
                p = os.path.join(model_dir, name)
                if os.path.isfile(p) and not name.startswith("."):
                    self.client.log_artifact(self.run_id, p)
            saved = os.path.join(tmp, MODEL_ARTIFACT)
            save_pyfunc(model, os.path.join(model_dir, "model.json"), saved)
            self.client.log_artifacts(self.run_id, saved, MODEL_ARTIFACT)
        self.timings["artifacts"] = time.time() - t0
        self.mark_current(model_dir)

    def mark_current(self, model_dir: str) -> None:
        """This run's model is now the one at ``model_dir``: tag it
        ``segmentation.model_current=true`` and earlier fit runs that wrote the same directory (a
        retry or backfill of the same date) ``false`` with ``segmentation.superseded_by``, so
        ``tags.segmentation.model_current = 'true'`` finds exactly one run per model directory."""
        path = os.path.abspath(model_dir)
        self.client.set_tag(self.run_id, "segmentation.model_current", "true")
        if "'" in path:
            return                                  # not expressible in a search filter
        for run in self.client.search_runs(
                [self.experiment_id], max_results=1000,
                filter_string=f"tags.`segmentation.model_dir` = '{path}' and "
                              "tags.`segmentation.model_current` = 'true'"):
            if run.info.run_id != self.run_id:
                self._log(run_id=run.info.run_id, tags={"segmentation.model_current": "false",
                                                        "segmentation.superseded_by": self.run_id})

    def note_attempt(self, checkpoint) -> None:
        """Tie this run to earlier attempts of the same fit (``resume.open_checkpoint``): tag it
        with its attempt number and, when it resumes a checkpoint, the run it continues
        (``segmentation.resumed_from_run_id``) and how far that got; a dead attempt's run still
        RUNNING (its driver was killed) is marked KILLED and tagged with the run that followed."""
        tags = {"segmentation.attempt": checkpoint.attempt}
        prev = checkpoint.previous or {}
        if prev.get("run_id"):
            tags["segmentation.resumed_from_run_id"] = prev["run_id"]
            tags["segmentation.resumed_from_attempt"] = prev.get("attempt")
            tags["segmentation.resumed_lambda_steps"] = checkpoint.steps_done()
        elif checkpoint.discarded:
            tags["segmentation.checkpoint_discarded"] = checkpoint.discarded
        self._log(tags=tags)
        dead = ([prev] if prev else []) + list(checkpoint.abandoned)
        for att in dead:
            run_id = att.get("run_id")
            if not run_id or run_id == self.run_id:
                continue
            try:
                run = self.client.get_run(run_id)
            except Exception as err:  # noqa: BLE001 - another store, a deleted run: say so, go on
                import logging

                logging.getLogger(__name__).warning("could not mark the earlier attempt's MLflow run %s: %s",
                                                    run_id, err)
                continue
            if run.info.status == "RUNNING":
                self.client.set_tag(run_id, "segmentation.ended",
                                    f"driver died (pid {att.get('pid')} on {att.get('host')}); "
                                    f"continued by run {self.run_id}")
                self.client.set_terminated(run_id, "KILLED")

    def finish(self, status: str = "FINISHED") -> None:
        timings = {f"mlflow_seconds_{k}": v for k, v in self.timings.items() if k != "n_children"}
        try:
            self._log(metrics=[(k, v, 0) for k, v in timings.items()])
        finally:
            self.client.set_terminated(self.run_id, status)

    @property
    def model_uri(self) -> str:
        return f"runs:/{self.run_id}/{MODEL_ARTIFACT}"


class ChildLogger:
    """Queue + worker thread logging child runs (``FitTracker.start_children``)."""

    def __init__(self, tracker: FitTracker, n_folds: int):
        import queue
        import threading

        self.tracker, self.n_folds = tracker, n_folds
        self.queue: "queue.Queue" = queue.Queue()
        self.logged: dict = {}
        self.error: BaseException | None = None
        self.busy = 0.0
        self.thread = threading.Thread(target=self._work, name="mlflow-child-runs", daemon=True)
        self.thread.start()

    def __call__(self, row: dict) -> None:
        self.queue.put(dict(row))

    def _work(self) -> None:
        while True:
            row = self.queue.get()
            if row is None:
                return
            if self.error is not None:
                continue
            t0 = time.time()
            try:
                key = (int(row["alpha_index"]), int(row["lambda_index"]))
                self.logged[key] = self.tracker._log_child(row, self.n_folds)
            except Exception as err:  # noqa: BLE001 - reported by close(), rest logged synchronously
                self.error = err
            self.busy += time.time() - t0

    def close(self) -> dict:
        self.queue.put(None)
        self.thread.join()
        return dict(self.logged)


def _metric_name(name: str) -> str:
    """A metric-key fragment for any name: MLflow keys allow alphanumerics, ``_ - . /`` and
    spaces and must be normalised paths (no ``//``, ``/./``, leading ``/``, trailing ``/``);
    here only ASCII alphanumerics, ``_ - .`` and spaces are kept, anything else becomes ``_``
    (so no ``/`` path tricks), and an empty result becomes ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. ]", "_", str(name)).strip() or "_"


def metric_keys(names) -> dict[str, str]:
    """Original name -> key fragment (``_metric_name``), unique over ``names``: a name that
    sanitises to a key already taken gets ``-2``, ``-3``, ... appended (the first suffix not
    taken, so no two names share a key whatever their order)."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for n in names:
        if n in out:
            continue
        key, i = _metric_name(n), 1
        while key in taken:
            i += 1
            key = f"{_metric_name(n)}-{i}"
        out[n] = key
        taken.add(key)
    return out


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def pyfunc_signature(model):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from segmentation.tracking.pyfunc_model import score_column_names

    enc = model.encoding
    inputs = [ColSpec("double", c) for c in enc["numeric"]] + \
             [ColSpec("string", c) for c in enc.get("categorical", {})]
    outputs = [ColSpec("string", "segment")] + \
              [ColSpec("double", c) for c in score_column_names([model.segments[j] for j in model.assignable])]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def save_pyfunc(model, model_json: str, path: str) -> str:
    """Save the pyfunc (models from code, coefficients as the JSON artifact) to ``path``."""
    import warnings

    import mlflow

    with warnings.catch_warnings():
        # "add type hints" / "no input example": the signature is given explicitly instead
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path, python_model=PYFUNC_CODE, artifacts={"model_json": model_json},
            signature=pyfunc_signature(model),
            pip_requirements=[f"mlflow=={mlflow.__version__}", "numpy", "pandas"])
    return path
