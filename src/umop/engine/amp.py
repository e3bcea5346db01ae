"""Mixed precision on every device: which autocast dtype a run uses, and whether it needs a GradScaler.

``solver.amp`` switches autocast on; ``solver.amp_dtype`` picks the dtype:

========  ==================================================  =======================================
device    ``amp_dtype: auto``                                 explicit ``bf16`` / ``fp16``
========  ==================================================  =======================================
CUDA      bf16 where the GPU supports it (Ampere+), else fp16  as asked (bf16 on a GPU without it: error)
CPU       bf16 if the CPU has native bf16 (AVX512-BF16 / AMX) as asked for bf16; fp16: float32 + warning
========  ==================================================  =======================================

A CPU without native bf16 would run bf16 autocast emulated, slower than float32: the run falls back to
float32 with ONE warning. Only fp16 needs a GradScaler (bf16 has float32's exponent range). The losses,
assignment, level statistics and PFL's gamma_ad are computed in float32 whatever the autocast dtype
(:meth:`umop.models.detector.OneStageDetector.forward`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["AMP_DTYPES", "AmpSettings", "cpu_supports_bf16", "resolve_amp"]

AMP_DTYPES = ("auto", "bf16", "fp16")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """True if this CPU runs bf16 matrix products natively (AVX512-BF16 or AMX tiles).

    Uses ``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported`` (torch >= 2.3); on an older
    torch, oneDNN's own bf16 check.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    checks = [check for check in checks if check is not None]
    if checks:
        return any(bool(check()) for check in checks)
    try:  # pragma: no cover - old torch
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover
        return False


@dataclass(frozen=True)
class AmpSettings:
    """What a run does: autocast ``enabled`` with ``dtype`` on ``device_type``; ``use_scaler`` for fp16."""

    enabled: bool
    dtype: torch.dtype
    device_type: str

    @property
    def use_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    @property
    def name(self) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"`` (for logs and summaries)."""
        if not self.enabled:
            return "fp32"
        return "bf16" if self.dtype == torch.bfloat16 else "fp16"

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype, enabled=self.enabled)


def resolve_amp(enabled: bool, amp_dtype: str, device: torch.device, *, warn: bool = True,
                bf16_supported: Optional[bool] = None) -> AmpSettings:
    """The autocast settings of ``solver.amp`` / ``solver.amp_dtype`` on ``device`` (see the module table).

    ``bf16_supported`` overrides the hardware check (tests). On a device that cannot run the requested
    precision usefully the result is float32 and, with ``warn``, one ``UserWarning`` says why.
    """
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"solver.amp_dtype must be one of {list(AMP_DTYPES)}, got {amp_dtype!r}")
    device = torch.device(device)
    fp32 = AmpSettings(False, torch.float32, device.type)
    if not enabled:
        return fp32
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
        if amp_dtype == "bf16" and not bf16:
            raise ValueError("solver.amp_dtype=bf16 but this GPU has no bf16 support: use fp16 or auto")
        name = amp_dtype if amp_dtype != "auto" else ("bf16" if bf16 else "fp16")
        return AmpSettings(True, _TORCH_DTYPES[name], "cuda")
    if device.type == "cpu":
        bf16 = cpu_supports_bf16() if bf16_supported is None else bf16_supported
        reason = None
        if amp_dtype == "fp16":
            reason = "fp16 autocast is not supported for training on CPU"
        elif not bf16:
            reason = "this CPU has no native bf16 (AVX512-BF16 / AMX): bf16 autocast would be slower"
        if reason is not None:
            if warn:
                warnings.warn(f"solver.amp=true ignored: {reason}; training in float32 "
                              f"(set solver.amp=false to silence this)", UserWarning, stacklevel=2)
            return fp32
        return AmpSettings(True, torch.bfloat16, "cpu")
    if warn:
        warnings.warn(f"solver.amp=true ignored on device type '{device.type}': training in float32",
                      UserWarning, stacklevel=2)
    return fp32
