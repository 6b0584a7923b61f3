"""The pyspark.ml API: ``FusedSegmentation`` (Estimator) and ``FusedSegmentationModel``
(Transformer), thin over ``segmentation.workflow.run_fit`` and ``policy.assign``."""
from segmentation.ml.estimator import FusedSegmentation, FusedSegmentationModel

__all__ = ["FusedSegmentation", "FusedSegmentationModel"]
