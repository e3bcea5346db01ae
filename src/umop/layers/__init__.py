"""Building blocks of the detection heads (shared by ATSS, FCOS and VFNet; detectron2's ``layers``)."""

from .head_blocks import (NormLayer, Scale, conv_tower, flatten_level, group_norm, log_variance_conv, prediction_conv,
                          prior_bias)

__all__ = ["NormLayer", "Scale", "conv_tower", "flatten_level", "group_norm", "log_variance_conv", "prediction_conv",
           "prior_bias"]
