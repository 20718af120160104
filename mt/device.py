"""Where and in what precision the model runs: the device, the autocast dtype, the autocast itself.

Training picks its precision from `training.precision` (auto: bf16 on CUDA, fp32 on CPU);
decoding follows the precision the run was trained with unless the user asks for another.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch

from mt.config import PRECISIONS
from mt.errors import MtError


def resolve_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise MtError(f"--device: expected auto, cpu or cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MtError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def wants_cuda(name: str) -> bool:
    """Whether a --device value lets a torchrun process use its local GPU."""
    return name != "cpu" and torch.cuda.is_available()


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision setting: bf16 on CUDA unless told otherwise; CPU runs fp32."""
    if precision not in PRECISIONS:
        raise MtError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda":
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Mixed precision in `dtype` on `device`; None: full precision."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def is_out_of_memory(error: RuntimeError) -> bool:
    """CUDA's out-of-memory error, or the CPU allocator's (a plain RuntimeError)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(error)


def free_cached_memory(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back, after an out-of-memory error."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
