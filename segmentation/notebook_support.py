"""What the notebooks under ``notebooks/`` share: reading their widgets, the MLflow experiment and
run date they default to, the simulated demo campaign, and ``treatment=share`` widget text.

The notebooks are thin: every step calls the package's API (``workflow``, ``model_config``,
``data.write``); this module only holds the glue that would otherwise be copied cell to cell.
Nothing here needs ``sparkContext`` (Spark Connect compatible).
"""
from __future__ import annotations

import datetime
import os


def widget_values(dbutils, names) -> dict[str, str]:
    """``name -> dbutils.widgets.get(name).strip()`` for every name."""
    return {name: dbutils.widgets.get(name).strip() for name in names}


def on_databricks() -> bool:
    from segmentation.tracking.uri import on_databricks as runtime

    return runtime(os.environ) is not None


def default_experiment(spark, given: str, name: str = "creative-segmentation") -> str:
    """``given``, else on Databricks the workspace path ``/Users/<current user>/<name>`` (the
    workspace names experiments by absolute path), else ``name``."""
    if given:
        return given
    if on_databricks():
        return f"/Users/{spark.sql('SELECT current_user()').first()[0]}/{name}"
    return name


def run_date_or_today(given: str) -> str:
    """``given`` (YYYY-MM-DD, checked) or today's UTC date."""
    from segmentation.data.write import parse_run_date

    day = parse_run_date(given) if given else datetime.datetime.now(datetime.timezone.utc).date()
    return day.isoformat()


def parse_shares(text: str, key: str) -> dict[str, float]:
    """``"ctrl=0.1, cr01=0.3"`` -> ``{"ctrl": 0.1, "cr01": 0.3}`` (also ``ctrl:0.1``); an entry
    that is not ``name=number`` raises ``ConfigError`` naming the widget ``key``."""
    from segmentation.errors import ConfigError

    out: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        sep = "=" if "=" in item else ":"
        name, _, value = item.rpartition(sep)
        try:
            out[name.strip()] = float(value)
        except ValueError:
            name = ""
        if not name.strip():
            raise ConfigError(f"widget '{key}': {item!r} is not treatment=number")
    return out


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [x.strip() for x in text.split(",") if x.strip()]


def simulate_exposures_table(spark, table: str, users: int, *, control: str = "ctrl", seed: int = 0):
    """A synthetic campaign of ``users`` users (10 creatives in 4 planted segments, one creative
    unlike its segment, a control arm ``control``) written to ``table`` (name or path; a
    ``schema.table`` name creates the schema). Returns ``(table, segments, control)``."""
    from segmentation.data.simulate import simulate_arrays
    from segmentation.data.write import write_output
    from segmentation.evaluation.simulate import add_control_arm

    campaign = add_control_arm(simulate_arrays(int(users), seed=seed), control=control, seed=seed)
    if "." in table and "/" not in table:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {table.rsplit('.', 1)[0]}")
    print(write_output(spark.createDataFrame(campaign.exposures), table, "table" if "/" not in table else None))
    return table, campaign.segments, control
