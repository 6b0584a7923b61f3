"""spark-submit entry point for `segment evaluate`.

    spark-submit --master yarn jobs/evaluate.py CONFIG.yaml [--set k=v ...] [--mlflow-run-id ID]

The package must be importable by the driver's Python (pip install it into the environment
spark-submit uses, or pass a wheel/zip with --py-files); executors get it shipped automatically.
"""
import sys

from segmentation.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
