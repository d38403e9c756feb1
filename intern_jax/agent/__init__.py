"""Agents: typed tools, tool protocols (InternLM2, Hermes, ReAct), a sandboxed Python interpreter and the
loop that runs a model over them. Everything here stands on the one decoder (``inference``)."""

from intern_jax.agent.tools import Tool, ToolRegistry, ToolResult, calculator, tool

__all__ = ["Tool", "ToolRegistry", "ToolResult", "calculator", "tool"]
