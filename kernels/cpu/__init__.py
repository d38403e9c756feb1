"""Native CPU kernels for XLA:CPU, called from jitted code through the XLA FFI.

- ``gemv.cc``: a group-quantized GEMV. XLA:CPU has no fast low-precision matrix-vector product, so
  packed 8- and 4-bit weights decode slower than float32 there; this small C++ kernel (the llama.cpp
  approach: codes converted in registers, activations left in float32) multiplies ``PackedWeight``
  codes directly. ``intern_jax.model.quantized`` chooses when to run it (CPU, a few rows).
- ``paged_attention.cc``: attention over a paged KV cache that reads the pages in place. XLA:CPU
  gathers a sequence's pages into rows element by element, which costs a decode batch more than its
  attention does. ``intern_jax.model.kv_cache`` uses it for float32 pages on CPU.

Both are compiled into one library with the machine's ``g++ -O3 -march=native`` by ``make setup``
(``scripts/build_native.py``) or lazily on first use, into ``kernels/cpu/_build/`` under a name that
carries a hash of the sources and flags (a changed source rebuilds). Without a compiler, or with
``INTERN_JAX_NATIVE=0``, nothing is built and ``available()`` is False: callers keep the XLA paths
(one warning says why).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SOURCES = (Path(__file__).with_name("gemv.cc"), Path(__file__).with_name("paged_attention.cc"))
HEADERS = (Path(__file__).with_name("helper_pool.h"),)  # included by the sources: part of the library's hash
BUILD_DIR = Path(__file__).with_name("_build")
TARGET = "intern_jax_group_gemv"
ATTENTION_TARGET = "intern_jax_paged_attention"
ENV = "INTERN_JAX_NATIVE"  # "0": never build or use the native kernel
MAX_ROWS = 8  # the most rows (decode slots) the native kernel takes; more go to the XLA path
FLAGS = ("-O3", "-march=native", "-pthread", "-std=c++17", "-shared", "-fPIC")

_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded library, or "error": why there is none


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def library_path() -> Path:
    """Where the library for these sources, compiler flags and jaxlib lives."""
    key = hashlib.sha256(b"".join(s.read_bytes() for s in (*SOURCES, *HEADERS)) + " ".join(FLAGS).encode()
                         + jax.ffi.include_dir().encode())
    return BUILD_DIR / f"native-{key.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the sources (if their library is missing or ``force``); raises ``RuntimeError`` on failure."""
    out = library_path()
    if out.exists() and not force:
        return out
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (g++ or $CXX)")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=BUILD_DIR)  # built aside, then renamed: concurrent builds are safe
    os.close(fd)
    cmd = [cxx, *FLAGS, "-I", jax.ffi.include_dir(), *map(str, SOURCES), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in [*BUILD_DIR.glob("gemv-*.so"), *BUILD_DIR.glob("native-*.so")]:  # libraries of earlier sources
        if old != out:
            old.unlink(missing_ok=True)
    return out


def disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


def _load():
    with _lock:
        if "lib" in _state or "error" in _state:
            return _state.get("lib")
        try:
            lib = ctypes.cdll.LoadLibrary(str(build()))
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.IjGroupGemv), platform="cpu")
            jax.ffi.register_ffi_target(ATTENTION_TARGET, jax.ffi.pycapsule(lib.IjPagedAttention), platform="cpu")
            _state["lib"] = lib
        except (RuntimeError, OSError, AttributeError) as e:
            _state["error"] = str(e)
            warnings.warn(f"the native CPU kernels are unavailable, packed weights and paged attention use the "
                          f"slower XLA paths: {e}",
                          RuntimeWarning, stacklevel=3)
        return _state.get("lib")


def available() -> bool:
    """Whether the native kernel can run here (builds and loads it on first call; False when disabled)."""
    return not disabled() and _load() is not None


def isa() -> str:
    """The code path the loaded library was built with: "avx512", "portable", or "unavailable"."""
    if not available():
        return "unavailable"
    return "avx512" if _state["lib"].ij_gemv_isa() else "portable"


def group_gemv(x, q, scales, mins=None, *, bits: int, group_size: int, out_dtype=None):
    """``x [..., I] @ w`` -> ``[..., O]`` for a ``PackedWeight`` layout (see ``gemv.cc``), in f32 then ``out_dtype``.

    q: 8-bit ``[I, O]`` int8, 4-bit ``[I // 2, O]`` uint8; scales, mins ``[I // group_size, O]``
    (4-bit with mins None: the codes' zero point is 8, as in ``quantized_matmul_xla``). Jittable;
    requires ``available()``.
    """
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if not available():
        raise RuntimeError(f"the native quantized GEMV is unavailable ({_state.get('error', ENV + '=0')}); "
                           "multiply with kernels.quantized_matmul.quantized_matmul_xla instead")
    x = jnp.asarray(x)
    lead, d_in = x.shape[:-1], x.shape[-1]
    want = (d_in if bits == 8 else d_in // 2, None)
    if q.ndim != 2 or q.shape[0] != want[0] or (bits == 4 and d_in % 2):
        raise ValueError(f"codes {q.shape} do not fit an input of {d_in} at {bits} bits "
                         f"(expected [{want[0]}, out])")
    if q.dtype != (jnp.int8 if bits == 8 else jnp.uint8):
        raise ValueError(f"{bits}-bit codes must be {'int8' if bits == 8 else 'uint8'}, got {q.dtype}")
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2 or d_in % group_size:
        raise ValueError(f"group_size {group_size!r} must be an even integer dividing the input dimension {d_in}")
    d_out = q.shape[1]
    if scales.shape != (d_in // group_size, d_out):
        raise ValueError(f"scales {scales.shape} must be [in / group_size, out] = {(d_in // group_size, d_out)}")
    if bits == 4 and mins is None:
        mins = -8.0 * scales.astype(jnp.float32)
    if mins is not None and mins.shape != scales.shape:
        raise ValueError(f"mins {mins.shape} must match scales {scales.shape}")
    # float16 (GGUF blocks) and float32 parameters go in as they are; others become float32
    ok = scales.dtype in (jnp.float16, jnp.float32) and (mins is None or mins.dtype == scales.dtype)
    if not ok:
        scales = scales.astype(jnp.float32)
        mins = None if mins is None else mins.astype(jnp.float32)
    if mins is None:
        mins = jnp.zeros((0,), scales.dtype)
    x2 = x.reshape(-1, d_in).astype(jnp.float32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((x2.shape[0], d_out), jnp.float32),
                            vmap_method="sequential")
    y = call(x2, q, scales, mins, bits=np.int64(bits), group_size=np.int64(group_size))
    return y.astype(out_dtype or x.dtype).reshape(*lead, d_out)


def paged_attention(q, k_pages, v_pages, block_tables, rows, slots, *, layer: int, sm_scale: float | None = None):
    """Attention of queries ``q [N, H, D]`` over layer ``layer`` of float32 pages ``[L, K, P, page, D]``
    (see ``paged_attention.cc``): query ``n`` belongs to sequence ``rows[n]`` (its pages:
    ``block_tables [R, W]``) and sees the keys at slots ``0 .. slots[n]`` (none when negative); a query
    without keys gives zeros. Returns ``[N, H, D]`` float32. Jittable; requires ``available()``.

    The whole page arrays go in (not one layer's slice), so nothing is copied to call it."""
    if not available():
        raise RuntimeError(f"the native paged attention is unavailable ({_state.get('error', ENV + '=0')}); "
                           "use the XLA path of intern_jax.model.kv_cache instead")
    n, h, d = q.shape
    if k_pages.ndim != 5 or k_pages.shape != v_pages.shape or k_pages.shape[-1] != d or h % k_pages.shape[1]:
        raise ValueError(f"pages {k_pages.shape} / {v_pages.shape} do not fit queries {q.shape}")
    if not 0 <= layer < k_pages.shape[0]:
        raise ValueError(f"layer {layer} is outside 0..{k_pages.shape[0] - 1}")
    call = jax.ffi.ffi_call(ATTENTION_TARGET, jax.ShapeDtypeStruct((n, h, d), jnp.float32), vmap_method="sequential")
    return call(q.astype(jnp.float32), k_pages.astype(jnp.float32), v_pages.astype(jnp.float32),
                jnp.asarray(block_tables, jnp.int32), jnp.asarray(rows, jnp.int32), jnp.asarray(slots, jnp.int32),
                layer=np.int64(layer), scale=np.float32(d**-0.5 if sm_scale is None else sm_scale))


def main() -> int:
    """Build the library now (``make setup``); a failure is reported, never fatal."""
    if disabled():
        print(f"native CPU kernels: not built ({ENV}=0)")
        return 0
    try:
        path = build()
    except (RuntimeError, OSError) as e:
        print(f"native CPU kernels: not built, packed weights and paged attention will use the XLA paths: {e}",
              file=sys.stderr)
        return 0
    print(f"native CPU kernels: {path}")
    return 0
