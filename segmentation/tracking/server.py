"""Reaching the tracking store: bounded HTTP retries, a probe before any work, one-line errors.

MLflow's HTTP client retries a failed request 7 times with backoff factor 2 and a 120 s timeout
per attempt: a fit pointed at a tracking server that is down waits about 250 s and ends in an
``MlflowException`` traceback. For an HTTP(S) tracking server ``bound_http_client`` sets, for
this process and only where the user has not set them:

    MLFLOW_HTTP_REQUEST_MAX_RETRIES=2, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR=1,
    MLFLOW_HTTP_REQUEST_TIMEOUT=15

so a refused connection fails in about 3 s (backoff sleeps 0, 2 s plus up to 1 s jitter) and an
unanswered one in at most 3 x 15 s + 3 s. ``probe`` then makes one REST call (no retries, 5 s
timeout, MLflow's own credentials: token, basic auth, TLS settings) before anything else, so
a server that is down, or rejects the credentials, is known before any Spark work starts.
Other stores (sqlite, Databricks) keep MLflow's settings; their first call is the probe.
"""
from __future__ import annotations

import logging
import os
import re
from typing import MutableMapping, Optional

from segmentation.errors import TrackingUnavailable
from segmentation.tracking.uri import TrackingTarget

log = logging.getLogger(__name__)

HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
PROBE_TIMEOUT = 5


def bound_http_client(target: TrackingTarget,
                      environ: Optional[MutableMapping[str, str]] = None) -> dict[str, str]:
    """Set the ``HTTP_BOUNDS`` the user has not set (HTTP(S) servers only); returns the
    settings in effect, each with where it came from."""
    environ = os.environ if environ is None else environ
    if not target.is_server:
        return {}
    effective = {}
    for key, value in HTTP_BOUNDS.items():
        if environ.get(key):
            effective[key] = f"{environ[key]} (yours)"
        else:
            environ[key] = value
            effective[key] = value
    log.debug("MLflow HTTP client bounds: %s", effective)
    return effective


def transport_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the tracking store could not be reached or refused the call"."""
    from mlflow.exceptions import MlflowException

    errors: list[type[BaseException]] = [MlflowException, OSError]
    try:
        import requests

        errors.append(requests.exceptions.RequestException)
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    try:
        from sqlalchemy.exc import SQLAlchemyError

        errors.append(SQLAlchemyError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def one_line(err: BaseException, limit: int = 300) -> str:
    """The gist of an MLflow/requests error on one line: the innermost cause, trimmed."""
    text = " ".join(str(err).split()) or type(err).__name__
    found = re.search(r"\[Errno -?\d+\][^'\"()]*|(?:Read|Connect|Connection)[^'\"()]*timed out"
                      r"(?: \(\w+ timeout=[\d.]+\))?", text)
    if found:
        return found.group(0).strip()
    for marker in ("Caused by ", "failed with exception "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def probe(target: TrackingTarget, timeout: float = PROBE_TIMEOUT) -> None:
    """One REST call to an HTTP(S) tracking server (search one experiment), no retries;
    raises ``TrackingUnavailable`` naming the URI if it does not answer 200. A no-op for
    other stores (their first real call is the probe)."""
    if not target.is_server:
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        resp = http_request(get_default_host_creds(target.uri), "/api/2.0/mlflow/experiments/search",
                            "GET", max_retries=0, backoff_factor=0, timeout=timeout,
                            params={"max_results": 1})
    except Exception as err:  # noqa: BLE001 - every failure to connect means the same thing here
        raise TrackingUnavailable(f"MLflow tracking server {target.uri} is unreachable "
                                  f"({one_line(err)})") from None
    if resp.status_code != 200:
        what = {401: "rejected the credentials", 403: "refused access"}.get(
            resp.status_code, f"answered HTTP {resp.status_code}")
        body = " ".join(resp.text.split())[:200]
        raise TrackingUnavailable(f"MLflow tracking server {target.uri} {what}"
                                  + (f": {body}" if body else ""))
