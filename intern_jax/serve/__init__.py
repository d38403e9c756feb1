"""Serving: the engine (continuous batching over a paged KV cache), its scheduler and its block pool.

The engine is the only place requests are scheduled; every token it produces comes from the one
``Decoder``. The HTTP server stands on ``Engine.submit``.
"""

from intern_jax.serve.block_pool import BlockPool
from intern_jax.serve.engine import Engine, EngineConfig, Increment, Result
from intern_jax.serve.scheduler import Scheduler

__all__ = ["BlockPool", "Engine", "EngineConfig", "Increment", "Result", "Scheduler"]
