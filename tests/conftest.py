"""Test session setup: 8 fake CPU devices for sharded code, float32 matmuls at full precision."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def assert_float32_parity(ours, reference, *, rel: float = 1e-5, what: str = "") -> None:
    """Float32 parity against an independent implementation, with a bound that scales with magnitude.

    Two float32 forwards that sum in different orders differ by a few ulps per layer of the values
    they carry, so the bound is ``rel`` times the largest magnitude compared (at least 1): rel=1e-5 is
    ~80 float32 ulps, room for tens of layers, and still far below any real bug (a wrong rope order,
    a missing bias or a transposed weight moves logits by tenths or more).
    """
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, f"{what}: shapes {ours.shape} vs {reference.shape}"
    assert np.isfinite(ours).all() and np.isfinite(reference).all(), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(reference).max()))
    error = float(np.abs(ours - reference).max())
    assert error <= rel * scale, f"{what}: max |diff| {error:.3g} > {rel:g} x {scale:.3g} (largest |reference|)"


@pytest.fixture
def float32_parity():
    """``float32_parity(ours, reference, rel=1e-5, what="")``: see :func:`assert_float32_parity`."""
    return assert_float32_parity
