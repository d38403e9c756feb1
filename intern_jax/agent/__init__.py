"""Agents: typed tools, tool protocols (InternLM2, Hermes, ReAct) and ReWOO, a sandboxed Python interpreter,
document search and file reading, tools over MCP (served and used), and the loop that runs a model over them.
Everything here stands on the one decoder (``inference``)."""

from intern_jax.agent.agent import Agent, AgentResult, ChatModel, DecoderChatModel, EngineChatModel, OpenAIChatModel
from intern_jax.agent.files import FileReader
from intern_jax.agent.mcp_tools import MCPTools
from intern_jax.agent.protocols import (
    INTERPRETER,
    HermesProtocol,
    InternLM2Protocol,
    Parsed,
    ReActProtocol,
    ToolCall,
    get_protocol,
)
from intern_jax.agent.rewoo import ReWOOAgent
from intern_jax.agent.sandbox import PythonSandbox
from intern_jax.agent.search import DocumentSearch
from intern_jax.agent.tools import Tool, ToolRegistry, ToolResult, calculator, tool

__all__ = [
    "INTERPRETER", "Agent", "AgentResult", "ChatModel", "DecoderChatModel", "DocumentSearch", "EngineChatModel",
    "FileReader",
    "HermesProtocol", "InternLM2Protocol", "MCPTools",
    "OpenAIChatModel", "Parsed", "PythonSandbox", "ReActProtocol", "ReWOOAgent", "Tool", "ToolCall", "ToolRegistry",
    "ToolResult", "calculator", "get_protocol", "tool",
]
