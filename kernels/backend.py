"""Where the Pallas kernels run: interpret mode off-GPU, the Triton lowering on GPU.

The kernels are written against the portable `pl.pallas_call` + `BlockSpec` API and
always pass `triton.CompilerParams`, which selects the Triton lowering explicitly on
jax 0.10 and 0.11 alike (see `kernels/__init__.py` for why not Mosaic GPU). This
module does not pick block sizes; each kernel owns its own tuning table.
"""

from __future__ import annotations

import jax
from jax.experimental.pallas import triton as pl_triton

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")


def resolve_interpret(interpret: bool | None) -> bool:
    """`None` -> interpret everywhere except on a GPU backend."""
    if interpret is None:
        return jax.default_backend() not in _GPU_PLATFORMS
    return bool(interpret)


def triton_params(num_warps: int = 4, num_stages: int = 2):
    """Compiler parameters that select the Pallas Triton backend on GPU."""
    return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def block_size(length: int, preferred: int, minimum: int = 16) -> int:
    """A power-of-two block no larger than needed for `length` (Triton needs 2^k >= 16)."""
    return max(minimum, min(preferred, next_power_of_2(length)))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
