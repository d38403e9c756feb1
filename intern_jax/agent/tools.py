"""Tools: typed Python functions whose OpenAI function schema comes from their signature and docstring.

``@tool`` wraps a function with type hints (``str``, ``int``, ``float``, ``bool``, ``Optional[...]``,
``Literal[...]``, ``list[...]``, ``dict[str, ...]``) and a Google- or reST-style docstring into a
``Tool``: ``tool.schema`` is ``{"type": "function", "function": {"name", "description", "parameters"}}``
and ``tool.call(arguments)`` validates JSON arguments against the signature and returns a
``ToolResult``; it never raises (missing, unknown or mistyped arguments, and exceptions inside the
tool, become an error result that names the problem). A ``ToolRegistry`` holds tools by name; a toolkit
is a class whose ``@tool`` methods share state (``registry.add_toolkit(instance)``).
This module knows nothing of models or prompts; built-in tools: ``calculator`` (here) and the Python
interpreter (``sandbox.py``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import operator
import re
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What a call returned: ``status`` "success" or "error"; ``content`` the text the model sees."""

    status: str
    content: str
    error: str | None = None

    @classmethod
    def ok(cls, content: Any) -> ToolResult:
        return cls("success", content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))

    @classmethod
    def fail(cls, error: str) -> ToolResult:
        return cls("error", f"error: {error}", error)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ schema from type hints

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def json_schema(hint) -> dict:
    """The JSON schema of one parameter's type hint."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if origin is Literal:
        kinds = {type(a) for a in args}
        schema = {"enum": list(args)}
        if len(kinds) == 1 and kinds.pop() in _JSON_TYPES:
            schema["type"] = _JSON_TYPES[type(args[0])]
        return schema
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return json_schema(inner[0])
        return {"anyOf": [json_schema(a) for a in inner]}
    if hint in (list, tuple) or origin in (list, tuple, typing.Sequence, Iterable):
        return {"type": "array", "items": json_schema(args[0])} if args else {"type": "array"}
    if hint is dict or origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = json_schema(args[1])
        return schema
    raise TypeError(f"tool parameter type {hint!r} has no JSON schema; use str, int, float, bool, "
                    "Optional, Literal, list[...] or dict[str, ...]")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """``(description, {param: description})`` from a Google (``Args:``) or reST (``:param x:``) docstring."""
    doc = inspect.cleandoc(doc or "")
    params: dict[str, str] = {}
    for m in re.finditer(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*(?:\n(?!:)\s+.*)*)", doc, re.M):
        params[m.group(1)] = " ".join(m.group(2).split())
    lines, description, section, current = doc.splitlines(), [], None, None
    for line in lines:
        stripped = line.strip()
        if re.match(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Note):\s*$", stripped):
            section = stripped[:-1]
            continue
        if stripped.startswith(":"):
            section = "rest"
            continue
        if section is None:
            description.append(stripped)
        elif section in ("Args", "Arguments", "Parameters"):
            m = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", stripped)
            if m and line.startswith((" ", "\t")) and not line.startswith(" " * 8):
                current = m.group(1)
                params[current] = m.group(2)
            elif current and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
    text = " ".join(" ".join(description).split())
    return text, params


def _check(value, hint, name: str) -> str | None:
    """An error message if ``value`` (decoded JSON) does not fit ``hint``; ints are accepted as floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = [_check(value, a, name) for a in args if a is not type(None)]
        return None if any(e is None for e in errors) else errors[0]
    if origin is Literal:
        return None if value in args else f"argument '{name}' must be one of {list(args)}, got {value!r}"
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif hint in (list, tuple) or origin in (list, tuple, typing.Sequence, Iterable):
        if not isinstance(value, list):
            return f"argument '{name}' must be an array, got {type(value).__name__} {value!r}"
        for i, item in enumerate(value):
            if args and (err := _check(item, args[0], f"{name}[{i}]")):
                return err
        return None
    elif hint is dict or origin is dict:
        if not isinstance(value, dict):
            return f"argument '{name}' must be an object, got {type(value).__name__} {value!r}"
        for k, item in value.items():
            if len(args) == 2 and (err := _check(item, args[1], f"{name}.{k}")):
                return err
        return None
    else:
        ok = isinstance(value, hint) if isinstance(hint, type) else True
    return None if ok else f"argument '{name}' must be {json_schema(hint).get('type', hint)}, got {value!r}"


# ------------------------------------------------------------------ tools


@dataclasses.dataclass
class Tool:
    """A callable with a name, a description and parameters (name -> (hint, default, description))."""

    fn: Callable
    name: str
    description: str
    hints: dict[str, Any]
    defaults: dict[str, Any]
    param_docs: dict[str, str]

    @property
    def schema(self) -> dict:
        properties = {}
        for p, hint in self.hints.items():
            properties[p] = json_schema(hint)
            if self.param_docs.get(p):
                properties[p]["description"] = self.param_docs[p]
        required = [p for p in self.hints if p not in self.defaults]
        parameters = {"type": "object", "properties": properties, "required": required}
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}

    def validate(self, arguments) -> str | None:
        """An error message naming the first bad argument, or None."""
        if not isinstance(arguments, dict):
            return f"arguments of {self.name} must be a JSON object, got {arguments!r}"
        extra = sorted(set(arguments) - set(self.hints))
        if extra:
            return f"{self.name} has no argument {', '.join(map(repr, extra))}; its arguments are {list(self.hints)}"
        missing = [p for p in self.hints if p not in self.defaults and p not in arguments]
        if missing:
            return f"{self.name} is missing the required argument {', '.join(map(repr, missing))}"
        for p, value in arguments.items():
            if err := _check(value, self.hints[p], p):
                return f"{self.name}: {err}"
        return None

    def call(self, arguments: dict | str | None = None) -> ToolResult:
        """Validate ``arguments`` (a dict or a JSON object string) and run the tool; never raises."""
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return ToolResult.fail(f"arguments of {self.name} are not valid JSON ({e.msg} at {e.pos})")
        if err := self.validate(arguments):
            return ToolResult.fail(err)
        try:
            out = self.fn(**arguments)
        except Exception as e:  # a tool's failure is an observation for the model, not a crash of the loop
            return ToolResult.fail(f"{self.name} raised {type(e).__name__}: {e}")
        return out if isinstance(out, ToolResult) else ToolResult.ok(out)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __get__(self, obj, objtype=None) -> Tool:
        """``@tool`` on a method of a toolkit class: looked up on an instance, the tool is bound to it."""
        return self if obj is None else dataclasses.replace(self, fn=self.fn.__get__(obj, objtype))


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None):
    """Decorate a typed function (``@tool`` or ``@tool(name=...)``) into a ``Tool``."""

    def make(fn: Callable) -> Tool:
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        params = {p: v for p, v in signature.parameters.items() if p not in ("self", "cls")}
        for p, v in params.items():
            if v.kind in (v.VAR_POSITIONAL, v.VAR_KEYWORD):
                raise TypeError(f"tool {fn.__name__}: *args / **kwargs have no schema; name parameter {p!r}")
            json_schema(hints.get(p, inspect.Parameter.empty))  # fail at definition on an unsupported type
        text, docs = parse_docstring(fn.__doc__)
        return Tool(fn=fn, name=name or fn.__name__, description=description or text,
                    hints={p: hints.get(p, inspect.Parameter.empty) for p in params},
                    defaults={p: v.default for p, v in params.items() if v.default is not v.empty},
                    param_docs=docs)

    return make(fn) if fn is not None else make


class ToolRegistry:
    """Tools by name; ``call(name, arguments)`` returns a ``ToolResult`` for unknown names too."""

    def __init__(self, tools: Iterable[Tool] = ()):
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> Tool:
        if not isinstance(t, Tool):
            raise TypeError(f"{t!r} is not a Tool; decorate it with @tool")
        if t.name in self.tools:
            raise ValueError(f"a tool named {t.name!r} is already registered")
        self.tools[t.name] = t
        return t

    def add_toolkit(self, toolkit) -> list[Tool]:
        """Add every ``@tool`` method of ``toolkit`` (an instance), bound to it, in definition order."""
        names = [n for klass in reversed(type(toolkit).__mro__) for n, v in vars(klass).items() if isinstance(v, Tool)]
        if not names:
            raise ValueError(f"{type(toolkit).__name__} has no @tool methods")
        return [self.add(getattr(toolkit, n)) for n in dict.fromkeys(names)]

    def __contains__(self, name) -> bool:
        return name in self.tools

    def __iter__(self):
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    @property
    def schemas(self) -> list[dict]:
        return [t.schema for t in self.tools.values()]

    def call(self, name: str, arguments: dict | str | None = None) -> ToolResult:
        if name not in self.tools:
            return ToolResult.fail(f"unknown tool {name!r}; the tools are {self.names}")
        return self.tools[name].call(arguments)


# ------------------------------------------------------------------ the calculator

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "log": math.log, "exp": math.exp,
              "sin": math.sin, "cos": math.cos, "tan": math.tan, "floor": math.floor, "ceil": math.ceil,
              "min": min, "max": max}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_POWER = 10_000


def evaluate_arithmetic(expression: str) -> int | float:
    """Evaluate arithmetic by walking its syntax tree (numbers, + - * / // % **, a few math functions)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
                raise ValueError(f"exponent {right} is too large (at most {MAX_POWER})")
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
                and not node.keywords):
            return _FUNCTIONS[node.func.id](*(walk(a) for a in node.args))
        raise ValueError(f"unsupported expression {ast.unparse(node)!r}: use numbers, + - * / // % ** and "
                         f"{', '.join(_FUNCTIONS)}")

    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"{expression!r} is not an arithmetic expression ({e.msg})") from None
    return walk(tree)


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: arithmetic such as "12 * (3 + 4) / 2"; supports + - * / // % ** and sqrt, log, exp,
            sin, cos, tan, abs, round, floor, ceil, min, max, pi, e.
    """
    value = evaluate_arithmetic(expression)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    return str(value)
