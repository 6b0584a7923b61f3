"""spark-submit entry point for `segment allocate`.

    spark-submit --master yarn jobs/allocate.py ARGS...   (same arguments as `segment allocate --help`)

The package must be importable by the driver's Python (pip install it into the environment
spark-submit uses, or pass a wheel/zip with --py-files); executors get it shipped automatically.
"""
import sys

from segmentation.cli import main

if __name__ == "__main__":
    sys.exit(main(["allocate", *sys.argv[1:]]))
