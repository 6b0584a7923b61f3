"""The fit's MLflow side as the workflow sees it: reach the store first, then survive losing it.

``start_fit_tracking(cfg)`` (before any Spark work):

1. resolves the tracking URI (``tracking/uri.py``, logged with its reason);
2. bounds MLflow's HTTP retries and timeout for an HTTP(S) server (``tracking/server.py``);
3. probes the store and opens the parent run (``FitTracker``). If that fails:
   ``mlflow.required: true`` (default) raises ``TrackingUnavailable`` (one line naming the URI,
   exit code 3, nothing fitted or written); ``mlflow.required: false`` logs one warning and
   returns None: the fit runs and writes its model without tracking.

``TrackedFit`` wraps the ``FitTracker``: every logging call is guarded. The first call that
cannot reach the store is recorded and every later one is skipped (no second wait on a dead
server), and ``report(model_dir)`` at the end says what was not logged: with
``mlflow.required: true`` as ``TrackingIncomplete`` (exit code 4: the model *was* written),
otherwise as one warning (exit code 0). The run is marked FAILED and tagged
``segmentation.tracking_incomplete`` if the store answers again by then.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional

from segmentation.errors import ConfigError, TrackingIncomplete, TrackingUnavailable
from segmentation.tracking.server import bound_http_client, one_line, probe, transport_errors
from segmentation.tracking.uri import TrackingTarget, experiment_problem, resolve_tracking

log = logging.getLogger(__name__)

RESULTS = "the parent run's metrics and artifacts (model.json, cv_table.csv, plots, pyfunc model)"
WHAT = {
    "log_data": "the data facts (data.* params and metrics)",
    "start_children": "grid-point child runs",
    "log_evaluation": "the evaluation metrics and files",
    "note_attempt": "the attempt tags (segmentation.attempt, resumed_from_run_id)",
    "finish": "the run's timings and final status",
}


def start_fit_tracking(cfg, **tracker_kwargs) -> Optional["TrackedFit"]:
    """Resolve, bound, probe and open the fit's parent run; see the module docstring."""
    target = resolve_tracking(cfg.mlflow.tracking_uri)
    problem = experiment_problem(target, cfg.mlflow.experiment)
    if problem:
        raise ConfigError(problem)
    bound_http_client(target)
    try:
        probe(target)
        from segmentation.tracking.mlflow_run import FitTracker

        with _quiet_retries(target):
            tracker = FitTracker(cfg, **tracker_kwargs)
    except TrackingUnavailable as err:
        msg = str(err)
    except transport_errors() as err:
        msg = f"MLflow tracking store {target.uri} cannot be reached ({one_line(err)})"
    else:
        return TrackedFit(tracker, target, cfg)
    if cfg.mlflow.required:
        raise TrackingUnavailable(
            f"{msg}; nothing was fitted (start the server, fix mlflow.tracking_uri or "
            "MLFLOW_TRACKING_URI, or set mlflow.required: false to fit without tracking)")
    log.warning("%s; fitting without MLflow tracking (mlflow.required is false)", msg)
    return None


class _DropRetryWarnings(logging.Filter):
    """urllib3 logs a WARNING per HTTP retry; the failure is reported once, by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying")


class _quiet_retries:
    """Context: urllib3's per-retry warnings dropped while the tracker talks to a server."""

    _filter = _DropRetryWarnings()

    def __init__(self, target: TrackingTarget):
        self.on = target.is_server

    def __enter__(self):
        if self.on:
            logging.getLogger("urllib3.connectionpool").addFilter(self._filter)
        return self

    def __exit__(self, *exc):
        if self.on:
            logging.getLogger("urllib3.connectionpool").removeFilter(self._filter)
        return False


class TrackedFit:
    """A ``FitTracker`` whose logging calls never end the fit; see the module docstring.

    Attributes and methods not defined here are the tracker's (methods guarded the same way).
    """

    def __init__(self, tracker, target: TrackingTarget, cfg):
        self.tracker = tracker
        self.target = target
        self.required = bool(cfg.mlflow.required)
        self.register_name = cfg.mlflow.register_model_name
        self.failure: Optional[BaseException] = None
        self.failed_at: Optional[str] = None
        self.not_logged: list[str] = []
        self.children_logged = 0
        self.registered = None            # the ModelVersion, when registered
        self.run_status = "incomplete"
        self._finished = False
        self._quiet = _quiet_retries(target).__enter__()
        inner = tracker._log_child

        def counted(*args, **kwargs):     # counts every child run logged (background or not)
            run_id = inner(*args, **kwargs)
            self.children_logged += 1
            return run_id

        tracker._log_child = counted

    # ---- the guard ---------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self.failure is not None

    def _guarded(self, what: str, fn, *args, **kwargs):
        """``fn(*args)`` unless the store was lost before; a transport error marks it lost."""
        if self.failure is not None:
            self.not_logged.append(what)
            return None
        try:
            return fn(*args, **kwargs)
        except transport_errors() as err:
            self.failure, self.failed_at = err, what
            self.not_logged.append(what)
            log.debug("MLflow call failed (%s)", what, exc_info=True)
            return None

    def __getattr__(self, name: str):
        value = getattr(self.__dict__["tracker"], name)
        if callable(value) and not name.startswith("_"):
            return functools.partial(self._guarded, WHAT.get(name, name.replace("_", " ")), value)
        return value

    # ---- what run_fit calls ------------------------------------------------------------------
    def log_data(self, prepared) -> None:
        self._guarded(WHAT["log_data"], self.tracker.log_data, prepared)

    def start_children(self, n_folds: int):
        return self._guarded(WHAT["start_children"], self.tracker.start_children, n_folds)

    def log_cv(self, cv, structure) -> float:
        total = len(cv.points)
        before = len(self.not_logged)
        secs = self._guarded("grid-point child runs", self.tracker.log_cv, cv, structure)
        if len(self.not_logged) > before:
            self.not_logged[-1] = f"grid-point child runs ({self.children_logged} of {total} logged)"
        return secs or 0.0

    def log_results(self, model, model_dir: str, **kwargs) -> None:
        self._guarded(RESULTS, self.tracker.log_results, model, model_dir, **kwargs)
        if self.register_name:
            from segmentation.tracking.registry import register_pyfunc

            self.registered = self._guarded(
                f"the Model Registry version of {self.register_name!r}", register_pyfunc,
                self.tracker.client, self.register_name, self.tracker.run_id)
            if self.registered is not None:
                self._guarded("the registered version tag", self.tracker.client.set_tag,
                              self.tracker.run_id, "segmentation.registered_model",
                              f"{self.register_name}/{self.registered.version}")

    def log_evaluation(self, cfg, result) -> None:
        """The evaluation's metrics and files on the fit's run (``evaluate: true``)."""
        from segmentation.evaluation import report

        self._guarded(WHAT["log_evaluation"], report.log_to_mlflow, cfg, result.to_dict(),
                      result.paths, self.tracker.run_id)

    def finish(self, status: str = "FINISHED") -> None:
        """Timings and final status (once). After a lost store: one attempt to tag the run
        ``segmentation.tracking_incomplete`` and mark it FAILED."""
        if self._finished:
            return
        self._finished = True
        if self.failure is None:
            self._guarded(WHAT["finish"], self.tracker.finish, status)
        else:
            try:
                self.tracker.client.set_tag(self.tracker.run_id, "segmentation.tracking_incomplete",
                                            "not logged: " + "; ".join(self.not_logged))
                self.tracker.client.set_terminated(self.tracker.run_id, "FAILED")
                self.run_status = "marked FAILED"
            except transport_errors():
                self.not_logged.append(WHAT["finish"])
                self.run_status = "left RUNNING (the store is still unreachable)"
        self._quiet.__exit__(None, None, None)

    def message(self, outputs: str) -> Optional[str]:
        """One line on what was not logged, or None if everything was."""
        if self.failure is None:
            return None
        return (f"MLflow logging to {self.target.uri} failed at {self.failed_at} "
                f"({one_line(self.failure)}); not logged: {'; '.join(dict.fromkeys(self.not_logged))}. "
                f"{outputs}; MLflow run {self.tracker.run_id} {self.run_status}")

    def report(self, outputs: str) -> None:
        """At the very end: raise ``TrackingIncomplete`` (``mlflow.required: true``) or log one
        warning saying what was not logged; nothing when everything was."""
        msg = self.message(outputs)
        if msg is None:
            return
        if self.required:
            raise TrackingIncomplete(msg)
        log.warning("%s (mlflow.required is false)", msg)
