"""Imbalance analyses: level statistics (UMOP Fig. 2/3), survey dataset analyses, HTML report.

Heavy modules (matplotlib) are imported lazily by the sub-modules that need them.
"""
from umop.analysis.objective import loss_gradient_norms

__all__ = ["loss_gradient_norms"]
