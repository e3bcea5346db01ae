"""Building blocks shared by the models (detectron2's ``layers``): the head blocks of ATSS, FCOS and VFNet, and the
backbones' frozen batch norm and stem pooling."""

from .batch_norm import FrozenBatchNorm2d
from .head_blocks import (NormLayer, Scale, conv_tower, flatten_level, group_norm, log_variance_conv, prediction_conv,
                          prior_bias)
from .pooling import ChannelsLastMaxPool2d

__all__ = ["ChannelsLastMaxPool2d", "FrozenBatchNorm2d", "NormLayer", "Scale", "conv_tower", "flatten_level",
           "group_norm", "log_variance_conv", "prediction_conv", "prior_bias"]
