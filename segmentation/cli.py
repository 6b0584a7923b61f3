"""The ``segment`` command: thin wrappers over the library, one verb each.

    segment simulate --out DIR [--users N] [--seed S]
    segment fit CONFIG.yaml [--set dotted.key=value ...] [--no-resume]
    segment assign --model MODEL_DIR --input PATH|TABLE --output PATH|TABLE [--run-date YYYY-MM-DD]
    segment demo [--out DIR]            simulate + fit + assign on local Spark
    segment evaluate CONFIG.yaml [--set k=v ...] [--mlflow-run-id ID]   off-policy evaluation
    segment allocate CONFIG.yaml [--set k=v ...]   coarse personalization (transport section)
    segment jvm-archive [--check]       build the driver JVM's class archive (faster local starts)

Exit codes: 0 success, 2 bad input or config (message names the key/column), 3 the MLflow
tracking store cannot be reached at the start (nothing fitted or written; ``mlflow.required:
false`` fits without it), 4 the outputs were written but MLflow logging failed part way (the
message says what was not logged), 5 another run is writing the same model directory (nothing
done), 1 anything else.

A process that seems stuck prints every thread's Python stack to stderr on ``kill -USR1 PID``
(``faulthandler``; the run goes on).
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
import time

from segmentation.errors import SegmentationError

log = logging.getLogger("segmentation")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="segment", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)

    s = sub.add_parser("simulate", help="write a synthetic campaign with planted segments")
    s.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    s.add_argument("--users", type=int, default=200_000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")

    f = sub.add_parser("fit", help="fit the segmentation model described by a YAML config")
    f.add_argument("config")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.lambda=0.01 (repeatable)")
    f.add_argument("--no-resume", action="store_true",
                   help="start the cross-validated path afresh even if a checkpoint of an earlier "
                        "attempt of the same config and data is waiting beside the model directory")

    a = sub.add_parser("assign", help="assign users to segments with a fitted model")
    a.add_argument("--model", required=True, help="model directory (holding model.json)")
    a.add_argument("--input", required=True, help="user table: path (parquet/csv/delta) or table name")
    a.add_argument("--output", required=True,
                   help="output: a path (Parquet, or Delta with --output-format delta) or a table "
                        "name (db.tbl, catalog.schema.tbl)")
    a.add_argument("--format", default=None, help="input format (default: from the path)")
    a.add_argument("--output-format", default=None, choices=["parquet", "delta", "table"],
                   help="output format (default: table for a name such as db.tbl, else parquet)")
    a.add_argument("--run-date", default=None, metavar="YYYY-MM-DD",
                   help="partition the output by run_date and replace only this date's partition "
                        "(a retry or backfill of the date leaves one copy)")
    a.add_argument("--user-col", default=None, help="user id column (default: the model's)")
    a.add_argument("--fit", default="relaxed", choices=["relaxed", "penalized"],
                   help="coefficients to assign with: the chosen (relaxed) model, or the penalised "
                        "fit it was refitted from (default: relaxed)")

    e = sub.add_parser("evaluate", help="off-policy evaluation of a fitted model against baselines "
                                          "(writes evaluation.json/.md/.png next to model.json)")
    e.add_argument("config")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    e.add_argument("--mlflow-run-id", default=None,
                   help="log to this MLflow run (default: the model's run if known, else a new run)")

    al = sub.add_parser("allocate", help="choose at most transport.max_treatments treatments and assign "
                                         "every user to one under capacity limits (optimal transport)")
    al.add_argument("config")
    al.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set transport.max_treatments=3 (repeatable)")

    j = sub.add_parser("jvm-archive", help="build the JVM class archive that makes a local Spark "
                                            "session start faster (once per Java and Spark install)")
    j.add_argument("--check", action="store_true",
                   help="only say whether a usable archive exists (exit 0) or not (exit 2)")

    d = sub.add_parser("demo", help="simulate a campaign, fit it and assign its users (local Spark)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--users", type=int, default=50_000)
    d.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("py4j", "pyspark", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _stacks_on_sigusr1()
    try:
        return {"simulate": cmd_simulate, "fit": cmd_fit, "assign": cmd_assign, "demo": cmd_demo,
                "evaluate": cmd_evaluate, "allocate": cmd_allocate,
                "jvm-archive": cmd_jvm_archive}[args.verb](args)
    except SegmentationError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except (FileNotFoundError, FileExistsError) as e:
        msg = str(e).replace("pass overwrite=True", "pass --overwrite") if args.verb == "simulate" else str(e)
        print(f"error: {one_line(msg)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - traceback for the log, then one line for the scheduler
        import traceback

        traceback.print_exc()
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        print(f"error: unexpected {type(e).__name__}: {first[:500]}", file=sys.stderr)
        return 1


def _stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` prints every thread's Python stack to stderr and the run goes on.
    Skipped where there is no SIGUSR1 or stderr has no file descriptor (``main()`` called
    in-process under a captured stderr)."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    except (AttributeError, ValueError, OSError):   # io.UnsupportedOperation is both
        pass


def one_line(msg) -> str:
    """A (possibly multi-line) error message as the single ``error: ...`` line schedulers show
    (Airflow's task summary, a Kubernetes termination message): lines joined with '; '."""
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    out = lines[0] if lines else ""
    for ln in lines[1:]:
        out += (" " if out.endswith(":") else "; ") + ln
    return out


def cmd_simulate(args) -> int:
    from segmentation.data.simulate import simulate_campaign

    t0 = time.time()
    info = simulate_campaign(args.out, n_users=args.users, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote a synthetic campaign of {args.users:,} users to {args.out} in {time.time() - t0:.1f}s")
    if isinstance(info, dict):
        for k, v in info.items():
            print(f"  {k}: {v}")
    return 0


def cmd_fit(args) -> int:
    from segmentation.config import load_config
    from segmentation.workflow import run_fit

    cfg = load_config(args.config, args.overrides)     # validated before Spark starts
    run_fit(cfg, resume=not args.no_resume)
    return 0


def cmd_assign(args) -> int:
    from segmentation.workflow import run_assign

    run_assign(args.model, args.input, args.output, fmt=args.format, user_col=args.user_col,
               fit=args.fit, run_date=args.run_date, output_format=args.output_format)
    return 0


def cmd_demo(args) -> int:
    from segmentation.workflow import run_demo

    run_demo(args.out, n_users=args.users, seed=args.seed)
    return 0


def cmd_evaluate(args) -> int:
    from segmentation.config import load_config
    from segmentation.evaluation.run import evaluate_config

    cfg = load_config(args.config, args.overrides)     # validated before Spark starts
    evaluate_config(cfg, mlflow_run_id=args.mlflow_run_id)
    return 0


def cmd_allocate(args) -> int:
    from segmentation.config import load_config
    from segmentation.workflow import run_allocate

    cfg = load_config(args.config, args.overrides)     # validated before Spark starts
    run_allocate(cfg)
    return 0


def cmd_jvm_archive(args) -> int:
    from segmentation import jvm_archive

    if args.check:
        path = jvm_archive.usable_archive()
        if path is None:
            print(f"no usable JVM class archive for this Java and Spark under {jvm_archive.cache_dir()}")
            return 2
        print(f"JVM class archive: {path}")
        return 0
    try:
        rec = jvm_archive.build()
    except jvm_archive.ArchiveError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"wrote the JVM class archive {rec['path']} ({rec['size'] / 1e6:.0f} MB, Java "
          f"{rec['java_version']}) in {rec['seconds']:.0f}s; local Spark sessions started by "
          f"segment use it (set {jvm_archive.ENV_MODE}=off not to)")
    if rec.get("swept"):
        print(f"removed {len(rec['swept'])} stale archive file(s) of installs that no longer exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
