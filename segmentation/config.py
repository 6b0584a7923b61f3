"""The ``segment fit`` configuration: YAML, ``--set dotted.key=value`` overrides, validation.

Everything is validated before Spark starts; every error names the offending key, e.g.
``config key 'model.alpha': must be between 0 and 1 (got 1.5)``. See conf/example.yaml for
a documented example of every key.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segmentation.errors import ConfigError

# Why the default alphas stop below 0.5: moving a direction u shared by all creatives of a
# segment from the deltas into gamma_j saves at most lambda (1-alpha) ||u||_2 of fusion penalty
# (the 1/n_j weights sum to one) and costs lambda alpha ||u||_1 >= lambda alpha ||u||_2. For
# alpha >= 0.5 the move never pays, so gamma_j is zero beyond its intercept at every lambda and
# argmax_j gamma_j . x assigns by base rates only.
DEFAULT_ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4]
DEGENERATE_ALPHA = 0.5


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DataConfig(_Section):
    exposures: str = Field(description="path (parquet/csv/delta) or metastore table name")
    format: Optional[Literal["parquet", "csv", "delta", "table"]] = None
    user_col: str = "user_id"
    creative_col: str = "creative"
    response_col: str = "response"
    covariates: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    propensity_col: Optional[str] = None
    store: Literal["auto", "spark", "files"] = Field(
        "auto", description="where the numeric blocks live between passes: 'spark' (a DataFrame "
                            "persisted by Spark, works on any cluster and over Spark Connect), "
                            "'files' (block files under block_dir, memory-mapped by the workers: "
                            "local mode or a shared path), or 'auto' (files for a local master or "
                            "when block_dir is set, else spark)")
    reader: Literal["auto", "spark", "arrow"] = Field(
        "auto", description="how prepare() reads a Parquet source: 'arrow' (pyarrow opens the files "
                            "inside the Spark tasks: about 4x faster than Spark handing rows to "
                            "Python), 'spark' (Spark reads and hands the rows over), or 'auto' "
                            "(arrow for Parquet files on file: paths with supported column types, "
                            "else spark)")
    block_dir: Optional[str] = Field(
        None, description="where block files go with store 'files'; on a cluster a path every "
                          "executor and the driver can read (default: /dev/shm or the temp dir)")
    cache_storage_level: str = Field(
        "DISK_ONLY", description="StorageLevel of the Spark-cached blocks (store 'spark'); the hot "
                                 "copy lives in the Python workers, Spark's is the fallback")
    worker_cache_mb: int = Field(
        4096, ge=0, description="block bytes one Python worker keeps between passes (store 'spark')")
    orphan_grace_seconds: float = Field(
        600.0, ge=0, description="block directories of a dead run (owner process gone) older than "
                                 "this are removed by the next run that finds them")

    @field_validator("cache_storage_level")
    @classmethod
    def _level(cls, v):
        levels = ("DISK_ONLY", "DISK_ONLY_2", "DISK_ONLY_3", "MEMORY_AND_DISK", "MEMORY_AND_DISK_2",
                  "MEMORY_AND_DISK_DESER", "MEMORY_ONLY", "MEMORY_ONLY_2", "OFF_HEAP")
        if v not in levels:
            raise ValueError(f"must be one of {list(levels)} (got {v!r})")
        return v

    @model_validator(mode="after")
    def _columns(self):
        if not self.covariates and not self.categorical:
            raise ValueError("data.covariates and data.categorical are both empty: give at least one covariate")
        cols = [self.user_col, self.creative_col, self.response_col, *self.covariates, *self.categorical]
        dup = sorted({c for c in cols if cols.count(c) > 1})
        if dup:
            raise ValueError(f"columns listed twice across data.*_col/covariates/categorical: {dup}")
        return self


class ModelConfig(_Section):
    lambda_: Optional[Union[float, list[float]]] = Field(None, alias="lambda")
    alpha: Optional[Union[float, list[float]]] = None
    standardize: bool = True
    tol: float = Field(1e-6, gt=0)
    max_iter: int = Field(50, ge=1)
    n_lambda: int = Field(20, ge=1)
    lambda_min_ratio: float = Field(0.01, gt=0, lt=1)
    curvature: Literal["auto", "full", "diagonal"] = Field(
        "auto", description="full per-creative Hessians (proximal Newton), their diagonals "
                            "(proximal quasi-Newton, for thousands of covariates), or auto (full up to p = 500)")
    lazy_hessian: bool = Field(
        True, description="full curvature only: reuse a fit's Hessians between refreshes (fresh ones "
                          "at a cold start, on a backtracking trial, after a slow step or every third "
                          "point), about half the CV's time at p in the tens for ~10% more passes; "
                          "false computes them at every pass (fewer passes: for clusters where a "
                          "pass's fixed cost dominates)")
    adaptive: bool = Field(False, description="adaptive group lasso: penalty factors from an initial fit "
                                              "on each fold (cross-validation only)")
    adaptive_power: float = Field(1.0, gt=0)

    @field_validator("lambda_")
    @classmethod
    def _lam(cls, v):
        for x in _as_list(v):
            if x < 0:
                raise ValueError(f"must be >= 0 (got {x})")
        return v

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        for x in _as_list(v):
            if not 0.0 <= x <= 1.0:
                raise ValueError(f"must be between 0 and 1 (got {x})")
        return v

    @property
    def lambdas(self) -> list[float] | None:
        return None if self.lambda_ is None else [float(x) for x in _as_list(self.lambda_)]

    @property
    def alphas(self) -> list[float]:
        return DEFAULT_ALPHAS if self.alpha is None else [float(x) for x in _as_list(self.alpha)]

    def solver_options(self):
        """The ``solver.options.SolverOptions`` every fit of a run uses (tol, max_iter,
        curvature, lazy_hessian)."""
        from segmentation.solver.options import SolverOptions

        return SolverOptions(tol=self.tol, max_iter=self.max_iter, curvature=self.curvature,
                             lazy_hessian=self.lazy_hessian)

    def alpha_warnings(self) -> list[str]:
        bad = [a for a in self.alphas if a >= DEGENERATE_ALPHA]
        if not bad:
            return []
        return [f"model.alpha {bad} >= 0.5: gamma_j is then zero beyond its intercept at every lambda "
                "(the L1 cost of a shared direction exceeds the fusion cost it saves), so users are "
                "assigned by segment base rates only; use alpha < 0.5 for covariate-driven segments"]

    @property
    def single(self) -> bool:
        """One (lambda, alpha) given: fit it directly, no cross-validation."""
        return (self.lambda_ is not None and len(_as_list(self.lambda_)) == 1
                and self.alpha is not None and len(_as_list(self.alpha)) == 1)


class CVConfig(_Section):
    folds: int = Field(5, ge=2, le=50)
    seed: int = 0
    rule: Literal["min", "1se", "1se_unpaired"] = "1se"
    # relaxed refits (selection/relax.py): the blend values g tried at every grid point;
    # true = the default grid, false or [] = no relaxation
    relax: Union[bool, list[float]] = True

    @field_validator("relax")
    @classmethod
    def _relax(cls, v):
        if isinstance(v, bool):
            return v
        for x in v:
            if not (0.0 <= float(x) <= 1.0):
                raise ValueError(f"relaxation values must lie in [0, 1] (got {x})")
        return [float(x) for x in v]

    @property
    def relax_grid(self) -> tuple[float, ...]:
        """The g values to try; () when relaxation is off."""
        from segmentation.selection.relax import RELAX_GRID

        if self.relax is True:
            return RELAX_GRID
        if self.relax is False:
            return ()
        return tuple(sorted(set(self.relax) | {1.0}))


class OutputConfig(_Section):
    model_dir: str
    overwrite: bool = True
    checkpoint_max_age_hours: float = Field(
        168.0, ge=0, description="a resume checkpoint beside another model directory of the same "
                                 "parent whose run is dead and that nothing wrote to for this long "
                                 "is removed by the next fit (segmentation/resume.py)")


class MlflowConfig(_Section):
    enabled: bool = True
    tracking_uri: Optional[str] = Field(
        None, description="default: MLFLOW_TRACKING_URI, else the platform's (Databricks: the "
                          "workspace), else sqlite:///<cwd>/mlflow.db (segmentation/tracking/uri.py)")
    experiment: str = "creative-segmentation"
    run_name: Optional[str] = None
    required: bool = Field(
        True, description="false: when the tracking store cannot be reached, fit and write the "
                          "model anyway with one warning (true: stop before any work, exit 3)")
    register_model_name: Optional[str] = Field(
        None, description="register the logged pyfunc model under this Model Registry name "
                          "(a new version per fit)")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on the fit's run, e.g. "
                                 "--set mlflow.tags.airflow.ds={{ ds }} (nested keys join with '.')")

    @field_validator("tags", mode="before")
    @classmethod
    def _flat_tags(cls, v):
        """``{airflow: {ds: 2024-01-01}}`` -> ``{"airflow.ds": "2024-01-01"}``; values as text
        (YAML reads a bare date or number, a tag is a string)."""
        if not isinstance(v, dict):
            return v
        out: dict[str, str] = {}

        def walk(prefix: str, node) -> None:
            for k, x in node.items():
                key = f"{prefix}.{k}" if prefix else str(k)
                if isinstance(x, dict):
                    walk(key, x)
                else:
                    out[key] = "" if x is None else str(x)

        walk("", v)
        return out


class TargetingConfig(_Section):
    value_per_response: float = Field(1.0, gt=0)
    cost_per_contact: float = Field(0.0, ge=0)


class TransportConfig(_Section):
    """Coarse personalization (segmentation.transport): offer at most ``max_treatments``.

    ``min_share`` / ``max_share`` map a treatment to a share of users (a treatment with a positive
    minimum share is always offered); ``costs`` are per-treatment costs subtracted from the values;
    ``values`` is a user value table (one numeric column per treatment) instead of a model; with a
    model, ``users`` is the table of users to score (default: the users of ``data.exposures``) and
    ``out_of_fold`` scores each user of the exposures with a fold model that did not see them and
    estimates the allocation's value on those held-out exposures (``segment allocate``).
    """

    max_treatments: int = Field(ge=1)
    treatments: Optional[list[str]] = None
    min_share: dict[str, float] = Field(default_factory=dict)
    max_share: dict[str, float] = Field(default_factory=dict)
    costs: dict[str, float] = Field(default_factory=dict)
    values: Optional[str] = Field(None, description="value table path; default: the fitted model")
    users: Optional[str] = Field(None, description="user table scored by the model (default: the users "
                                                   "of data.exposures)")
    format: Optional[Literal["parquet", "csv", "delta", "table"]] = Field(
        None, description="format of transport.values / transport.users (default: from the path)")
    user_col: Optional[str] = Field(None, description="user id column (default: data.user_col)")
    out_of_fold: bool = Field(False, description="model values from cross-fitted fold models, and the "
                                                 "allocation's held-out value by the evaluation's DR estimator")
    output_dir: Optional[str] = Field(None, description="where segment allocate writes (default: "
                                                        "<output.model_dir>/allocation)")
    seed: int = 0
    tol: float = Field(1e-9, gt=0, description="relative duality gap to stop at")
    exact_limit: int = Field(200, ge=0, description="enumerate every set when C(|T|, S) is at most this")
    sample_size: int = Field(20000, ge=0, description="users in the driver-side sample (by seeded hash of the "
                                                      "id) on which every dual solve is warm-started before "
                                                      "its exact solve on all users; 0: none")
    search_on_sample: bool = Field(True, description="run the search for the offered sets on the sample "
                                                     "first and start the search over all users from its "
                                                     "sets (fewer passes; the plan is still refined and its "
                                                     "gap certified on all users)")

    @model_validator(mode="after")
    def _limits(self):
        from segmentation.transport.capacity import check_shares

        if self.treatments is not None:
            if len(set(self.treatments)) != len(self.treatments):
                raise ValueError("transport.treatments: a treatment is listed twice")
            if self.max_treatments > len(self.treatments):
                raise ValueError(f"transport.max_treatments = {self.max_treatments} exceeds the number of "
                                 f"treatments in transport.treatments ({len(self.treatments)})")
            for name in ("min_share", "max_share", "costs"):
                unknown = sorted(set(getattr(self, name)) - set(self.treatments))
                if unknown:
                    raise ValueError(f"transport.{name}: unknown treatment(s) {unknown}")
        forced = [t for t, s in self.min_share.items() if s > 0]
        if len(forced) > self.max_treatments:
            raise ValueError(f"transport.min_share: {len(forced)} treatments have a positive minimum share "
                             f"and must all be offered, but transport.max_treatments = {self.max_treatments}")
        # share ranges and min <= max for every listed treatment; the min shares of the forced set
        # must fit (max shares are checked against the treatments and the offered set later)
        for name in ("min_share", "max_share"):
            for t, v in getattr(self, name).items():
                if not 0.0 <= float(v) <= 1.0:
                    raise ValueError(f"transport.{name}.{t}: a share must lie in [0, 1] (got {v})")
        for t, v in self.min_share.items():
            if float(v) > float(self.max_share.get(t, 1.0)) + 1e-9:
                raise ValueError(f"transport.min_share.{t} = {v} exceeds transport.max_share.{t} = "
                                 f"{self.max_share[t]}")
        if forced:
            check_shares(forced, self.min_share, {}, key="transport")
        if self.values is not None and (self.users is not None or self.out_of_fold):
            raise ValueError("transport.values is a value table: transport.users and transport.out_of_fold "
                             "apply to model-based values only")
        if self.users is not None and self.out_of_fold:
            raise ValueError("transport.out_of_fold scores the users of data.exposures with fold models; "
                             "it cannot be combined with transport.users")
        return self


class SegmentConfig(_Section):
    """Root of the config file."""

    data: DataConfig
    segments: Optional[dict[str, list[str]]] = None
    segments_file: Optional[str] = None
    control: Optional[str] = None
    model: ModelConfig = Field(default_factory=ModelConfig)
    cv: CVConfig = Field(default_factory=CVConfig)
    output: OutputConfig
    spark: dict[str, Any] = Field(default_factory=dict)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    evaluate: bool = False
    targeting: Optional[TargetingConfig] = None
    transport: Optional[TransportConfig] = None

    @model_validator(mode="after")
    def _segments(self):
        if (self.segments is None) == (self.segments_file is None):
            raise ValueError("give exactly one of 'segments' (inline mapping) and 'segments_file'")
        if self.segments is not None:
            self.segments = validate_segment_mapping(self.segments, self.control)
        return self

    def segment_mapping(self) -> dict[str, list[str]]:
        """The segment -> creatives mapping, reading ``segments_file`` if that is how it was given.

        Relative paths (here as in ``data.exposures``) are relative to the working directory.
        """
        if self.segments is not None:
            return self.segments
        return read_segments_file(self.segments_file, self.control)


def validate_segment_mapping(mapping: dict, control: str | None) -> dict[str, list[str]]:
    """Check the segment -> creatives mapping: non-empty, no creative in two segments."""
    if not mapping:
        raise ValueError("segments: no segment given")
    out: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for seg, crs in mapping.items():
        crs = [crs] if isinstance(crs, str) else list(crs or [])
        if not crs:
            raise ValueError(f"segments.{seg}: no creative listed")
        for c in crs:
            c = str(c)
            if c in seen:
                raise ValueError(f"creative {c!r} is mapped to two segments: {seen[c]!r} and {seg!r}")
            seen[c] = str(seg)
        out[str(seg)] = [str(c) for c in crs]
    if control is not None and control in seen:
        raise ValueError(f"control creative {control!r} must not belong to a segment (it is in {seen[control]!r})")
    return out


def read_segments_file(path: str, control: str | None) -> dict[str, list[str]]:
    if not os.path.exists(path):
        raise ConfigError(f"config key 'segments_file': file not found: {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"creative", "segment"} <= set(reader.fieldnames):
            raise ConfigError(f"config key 'segments_file': {path} must have columns creative,segment "
                              f"(found {reader.fieldnames})")
        mapping: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for n, row in enumerate(reader, start=2):
            c, s = (row["creative"] or "").strip(), (row["segment"] or "").strip()
            if not c or not s:
                raise ConfigError(f"config key 'segments_file': {path} line {n} has an empty creative or segment")
            if c in seen and seen[c] != s:
                raise ConfigError(f"config key 'segments_file': creative {c!r} is mapped to two segments: "
                                  f"{seen[c]!r} and {s!r} ({path} line {n})")
            if c in seen:
                continue
            seen[c] = s
            mapping.setdefault(s, []).append(c)
    try:
        return validate_segment_mapping(mapping, control)
    except ValueError as e:
        raise ConfigError(f"config key 'segments_file': {e}") from None


def _as_list(v) -> list:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides; values are parsed as YAML (``1e-3``, ``[0, 0.5]``, ``true``)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"--set {item!r}: config key {'.'.join(parts[:-1])!r} is not a section")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str, overrides: list[str] | None = None) -> SegmentConfig:
    """Read, override and validate a config file. Raises ConfigError naming the key at fault."""
    if not os.path.exists(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: top level must be a mapping of sections")
    cfg = parse_config(apply_overrides(raw, overrides or []))
    cfg.segment_mapping()          # a segments_file is read and checked before Spark starts
    return cfg


def parse_config(raw: dict) -> SegmentConfig:
    try:
        cfg = SegmentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    return cfg


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        key = ".".join(str(x) for x in err["loc"] if not str(x).startswith(("function-after", "union")))
        key = key.replace("lambda_", "lambda") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelled?)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"config key '{key}': {msg}")
    return "invalid config:\n  " + "\n  ".join(lines)


def flatten(cfg: SegmentConfig) -> dict[str, str]:
    """The config as flat ``section.key -> str`` pairs (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(node)

    walk("", cfg.model_dump(by_alias=True))
    return out
