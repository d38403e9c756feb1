"""Input pipeline settings (``DataConfig``) and the held-out split's arithmetic: standard library only.

A config file, a training config and the device suite can describe data without importing grain
or ArrayRecord; the pipeline that reads a corpus with these settings is ``pipeline.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from intern_jax.config import ConfigError, check_fields


@dataclass(frozen=True)
class DataConfig:
    """Input pipeline settings (nested into training configs as ``data``).

    ``mixture`` maps source -> weight, the share of *tokens* each source contributes (normalised);
    empty means every source in proportion to its tokens in the manifest. ``batch_size`` is global
    (rows per step, split evenly over JAX processes). ``num_workers`` grain worker processes
    (0 = in this process) must stay the same across restarts of a run. ``prefetch`` batches are
    buffered ahead (per worker). ``packing_bins`` rows are filled first-fit at a time.
    ``holdout``: the share of each source's documents set aside for evaluation and never trained
    on: one document in every ``round(1 / holdout)``, the first included (``HoldoutSplit``); the
    choice does not depend on ``seed``, so every run on a corpus holds out the same documents.
    """

    path: str = ""
    mixture: dict[str, float] = field(default_factory=dict)
    seq_len: int = 2048
    batch_size: int = 8
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    prefetch: int = 2
    packing_bins: int = 128
    holdout: float = 0.0

    def __hash__(self):  # hashable like the other configs, although ``mixture`` is a dict
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values))

    def __post_init__(self):
        check_fields(self, "data.")
        for name in ("seq_len", "batch_size", "packing_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"data.{name} must be a positive integer, got {value!r}")
        for name in ("num_workers", "prefetch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"data.{name} must be a non-negative integer, got {value!r}")
        if problem := holdout_problem(self.holdout):
            raise ConfigError(problem)
        if not isinstance(self.mixture, Mapping):
            raise ConfigError(f"data.mixture must be a dict source -> weight, got {self.mixture!r}")
        for source, weight in self.mixture.items():
            if not isinstance(weight, int | float) or not weight > 0:
                raise ConfigError(
                    f"data.mixture[{source!r}] = {weight!r}: weights must be positive numbers; "
                    "leave a source out of the mixture to exclude it"
                )




def holdout_problem(value) -> str | None:
    """Why ``value`` is not a valid ``data.holdout`` (None when it is)."""
    if not isinstance(value, int | float) or not 0.0 <= value <= 0.5:
        return f"data.holdout must be a fraction in [0, 0.5] (0 = none), got {value!r}"
    return None


def holdout_stride(fraction: float) -> int:
    """``holdout`` as a stride m: one document in every m, ``m = round(1 / fraction)``."""
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"data.holdout={fraction!r}: a held-out fraction must lie in (0, 0.5]")
    return max(2, round(1.0 / fraction))
