"""Low-precision inputs of the losses: computed in float32, gradients returned in the input's dtype."""
from __future__ import annotations

import torch
from torch import Tensor

LOW_PRECISION = (torch.float16, torch.bfloat16)


def upcast_low_precision(tensor: Tensor) -> Tensor:
    """``tensor`` as float32 when it is float16 / bfloat16 (else unchanged).

    Autograd of the cast returns the gradient in the original dtype, so a loss called with bf16 logits
    (autocast) is computed and returned in float32 while ``logits.grad`` stays bf16.
    """
    return tensor.float() if tensor.dtype in LOW_PRECISION else tensor
