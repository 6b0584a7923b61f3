"""The notebooks' shared glue (no Spark): widget text parsing, run date, experiment default."""
from __future__ import annotations

import datetime

import pytest

from segmentation import notebook_support as nbs
from segmentation.errors import ConfigError


def test_parse_shares():
    assert nbs.parse_shares("ctrl=0.1, cr01:0.3,,", "min_share") == {"ctrl": 0.1, "cr01": 0.3}
    assert nbs.parse_shares("", "max_share") == {}
    assert nbs.parse_shares("a.b=1e-2", "costs") == {"a.b": 0.01}
    for bad in ("ctrl", "ctrl=x", "=0.1"):
        with pytest.raises(ConfigError, match="widget 'min_share'"):
            nbs.parse_shares(bad, "min_share")


def test_run_date_and_experiment(monkeypatch):
    assert nbs.run_date_or_today("2026-12-01") == "2026-12-01"
    today = datetime.datetime.now(datetime.timezone.utc).date()
    assert nbs.run_date_or_today("") in {today.isoformat(), (today + datetime.timedelta(days=1)).isoformat()}
    with pytest.raises(ConfigError, match="not a date"):
        nbs.run_date_or_today("01/12/2026")
    for key in ("DATABRICKS_RUNTIME_VERSION", "DATABRICKS_ENV_VERSION"):
        monkeypatch.delenv(key, raising=False)
    assert nbs.default_experiment(None, "") == "creative-segmentation"
    assert nbs.default_experiment(None, "/Shared/x") == "/Shared/x"
    assert nbs.split_list(" a, b,,c ") == ["a", "b", "c"]
