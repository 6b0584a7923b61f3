"""Segment users by how they respond to marketing creatives.

Layers (each a sub-package, each readable and testable alone):

- ``segmentation.data``       read, validate, encode, fold-split exposure rows; numeric blocks
- ``segmentation.oracle``     loss / gradient / curvature of the Bernoulli log-likelihood,
                              in memory (numpy) and on Spark, one interface
- ``segmentation.solver``     penalty, proximal operators and the proximal Newton solver (numpy only)
- ``segmentation.selection``  lambda path and cross-validation
- ``segmentation.tracking``   MLflow logging
- ``segmentation.policy``     segment assignment and the policies compared in evaluation
- ``segmentation.evaluation`` off-policy evaluation, uplift, breakeven targeting
- ``segmentation.cli``        the ``segment`` command (thin)
"""

__version__ = "0.1.0"
