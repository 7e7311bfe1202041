"""Companion package for Masked Contrastive Learning (Cho, Seol, Lee; IJCAI 2021).

The method follows SPEC-level detail: losses (``losses``), the model
(``model``), Mahalanobis scoring with self-ensemble inference (``scoring``),
metrics (``metrics``), data (``data``, ``augment``) and the training and
evaluation engine (``train``, ``evaluate``).
"""

__version__ = "0.1.0"
