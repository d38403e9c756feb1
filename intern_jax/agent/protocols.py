"""Tool protocols (InternLM2, Hermes, ReAct) for agents.

The formats themselves (rendering tools and results, parsing replies into calls) live in
``intern_jax.inference.tool_calls``, one layer down, because the HTTP server speaks them too; this
module keeps the agents' names for them.
"""

from intern_jax.inference.tool_calls import (
    INTERPRETER,
    PROTOCOLS,
    HermesProtocol,
    InternLM2Protocol,
    Parsed,
    ReActProtocol,
    ToolCall,
    get_protocol,
)

__all__ = ["INTERPRETER", "PROTOCOLS", "HermesProtocol", "InternLM2Protocol", "Parsed", "ReActProtocol", "ToolCall",
           "get_protocol"]
