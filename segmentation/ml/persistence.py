"""Save and load ``FusedSegmentation`` and its model the pyspark.ml way, classic or Spark Connect.

Layout of a saved model at ``path`` (every part written and read through the Spark session, so
``path`` may be anything Spark writes to: a local path, HDFS, S3, DBFS, a Unity Catalog volume,
and the files land where the cluster, or the Spark Connect server, writes):

- ``metadata/``: pyspark.ml's own metadata (``DefaultParamsWriter.saveMetadata``: class, uid,
  Spark version, the Params set and their defaults), which ``Pipeline``/``PipelineModel`` load
  reads to find the class of a stage;
- ``model/``: one text file holding exactly the ``model.json`` of ``segment fit``
  (``SegmentationModel.to_dict``), read back whole (``wholetext``);
- ``cv_table/``: one text file holding ``cv_table.csv`` (cross-validated fits only);
- ``model.json`` (+ ``cv_table.csv``): plain copies when ``path`` is a directory this process
  sees (a local path with a local master or a Connect server on this host), so the saved model
  is also a model directory ``segment assign --model path`` and ``SegmentationModel.load`` read.

The metadata is written last: a save that stops part way leaves no metadata, and loading it
says so instead of reading half a model. ``write().overwrite()`` removes ``path`` first, through
the JVM helper pyspark.ml uses (classic) or the Spark Connect ML helper (Connect); the
Estimator's save is pyspark's ``DefaultParamsWriter`` with that same overwrite.
"""
from __future__ import annotations

import io
import json
import os
import re

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

FORMAT = 1
MODEL_PART = "model"
CV_TABLE_PART = "cv_table"


def _is_connect(spark) -> bool:
    from segmentation.spark_session import is_connect

    return is_connect(spark)


def handle_overwrite(spark, path: str) -> None:
    """Remove ``path`` (any Hadoop filesystem) the way pyspark.ml's ``overwrite()`` does."""
    if _is_connect(spark):
        from pyspark.ml.connect.readwrite import RemoteMLWriter

        RemoteMLWriter.handleOverwrite(path, True)
    else:
        from pyspark.ml.wrapper import JavaWrapper

        helper = JavaWrapper(JavaWrapper._new_java_obj("org.apache.spark.ml.util.FileSystemOverwrite"))
        helper._call_java("handleOverwrite", path, True, spark._jsparkSession)


def _write_text(spark, text: str, path: str) -> None:
    """One file under ``path`` whose content is ``text`` (plus a final newline)."""
    spark.createDataFrame([(text,)], schema="value string").coalesce(1).write.text(path)


def _read_text(spark, path: str) -> str:
    rows = [r[0] for r in spark.read.text(path, wholetext=True).collect() if r[0]]
    if len(rows) != 1:
        raise ValueError(f"{path}: expected one file, found {len(rows)}")
    return rows[0]


def _local_path(path: str) -> str | None:
    """``path`` without a ``file:`` scheme; None for another scheme (hdfs:, s3a:, dbfs:, ...)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path) and not path.startswith("file:"):
        return None
    return re.sub(r"^file:(//)?", "", path)


def _local_dir(path: str) -> str | None:
    """``path`` as a local directory when Spark wrote it where this process sees it, else None."""
    local = _local_path(path)
    return local if local is not None and os.path.isdir(os.path.join(local, "metadata")) else None


class _Overwriting:
    """``save`` with an overwrite that works over Spark Connect too."""

    def save(self, path: str) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path should be a string, got type {type(path).__name__}")
        if self.shouldOverwrite:
            handle_overwrite(self.sparkSession, path)
        elif _local_path(path) is not None and os.path.exists(_local_path(path)):
            raise FileExistsError(f"Path {path} already exists: to replace it, use "
                                  "write().overwrite().save(path)")
        self.saveImpl(path)


class EstimatorWriter(_Overwriting, DefaultParamsWriter):
    """pyspark.ml's ``DefaultParamsWriter`` (Params as JSON metadata), Connect-safe overwrite."""


class EstimatorReader(DefaultParamsReader):
    """pyspark.ml's ``DefaultParamsReader``."""


class ModelWriter(_Overwriting, MLWriter):
    """Writes a ``FusedSegmentationModel``; layout in the module docstring."""

    def __init__(self, instance) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        spark = self.sparkSession
        model = self.instance.segmentationModel
        if model is None:
            raise ValueError("this FusedSegmentationModel holds no fitted model to save")
        model_json = json.dumps(model.to_dict(), indent=2, allow_nan=False)
        _write_text(spark, model_json, os.path.join(path, MODEL_PART))
        cv = self.instance.cvTable
        if cv is not None:
            _write_text(spark, cv.to_csv(index=False, float_format="%.17g"),
                        os.path.join(path, CV_TABLE_PART))
        DefaultParamsWriter.saveMetadata(self.instance, path, spark, extraMetadata={
            "segmentation": {"format": FORMAT, "parts": [MODEL_PART] + ([CV_TABLE_PART] if cv is not None else [])}})
        local = _local_dir(path)
        if local is not None:                   # a model directory the CLI reads as well
            model.save(local)
            if cv is not None:
                cv.to_csv(os.path.join(local, "cv_table.csv"), index=False, float_format="%.17g")


class ModelReader(MLReader):
    def __init__(self, cls) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        import pandas as pd

        from segmentation.model import SegmentationModel

        spark = self.sparkSession
        try:
            metadata = DefaultParamsReader.loadMetadata(path, spark)
        except Exception as err:  # noqa: BLE001 - Spark's own 'path does not exist' et al.
            raise FileNotFoundError(f"no saved FusedSegmentationModel at {path} (no readable "
                                    f"metadata: {str(err).splitlines()[0]})") from None
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata["class"] != expected:
            raise ValueError(f"{path} holds a {metadata['class']}, not a {expected}")
        parts = metadata.get("segmentation", {}).get("parts", [MODEL_PART])
        model = SegmentationModel.from_dict(json.loads(_read_text(spark, os.path.join(path, MODEL_PART))))
        cv = None
        if CV_TABLE_PART in parts:
            cv = pd.read_csv(io.StringIO(_read_text(spark, os.path.join(path, CV_TABLE_PART))))
        instance = self.cls(model, cv)
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        return instance
