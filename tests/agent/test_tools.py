"""Tools: schemas from signatures and docstrings, argument validation that names the argument, the calculator."""

from __future__ import annotations

from typing import Literal, Optional

import pytest

from intern_jax.agent.tools import ToolRegistry, ToolResult, calculator, evaluate_arithmetic, tool


@tool
def search(query: str, top_k: int = 3, lang: Optional[Literal["en", "zh"]] = None,  # noqa: UP045 (Optional on purpose)
           fields: list[str] | None = None, weights: dict[str, float] | None = None) -> list[str]:
    """Search the documents.

    Args:
        query: what to look for.
        top_k (int): how many results
            to return.
        lang: the language.
    Returns:
        the matching titles.
    """
    return [query] * top_k


@tool(name="scale")
def scale_values(values: list[float], factor: float) -> list[float]:
    """Multiply values.

    :param values: the numbers.
    :param factor: the multiplier
        (any number).
    :returns: the products.
    """
    return [v * factor for v in values]


def test_schema_from_google_docstring_and_hints():
    f = search.schema["function"]
    assert search.schema["type"] == "function" and f["name"] == "search"
    assert f["description"] == "Search the documents."
    props = f["parameters"]["properties"]
    assert props["query"] == {"type": "string", "description": "what to look for."}
    assert props["top_k"] == {"type": "integer", "description": "how many results to return."}
    assert props["lang"] == {"enum": ["en", "zh"], "type": "string", "description": "the language."}
    assert props["fields"] == {"type": "array", "items": {"type": "string"}}
    assert props["weights"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert f["parameters"]["required"] == ["query"]


def test_schema_from_rest_docstring_and_name_override():
    f = scale_values.schema["function"]
    assert f["name"] == "scale" and f["description"] == "Multiply values."
    assert f["parameters"]["properties"]["factor"] == {"type": "number", "description": "the multiplier (any number)."}
    assert f["parameters"]["properties"]["values"]["items"] == {"type": "number"}
    assert f["parameters"]["required"] == ["values", "factor"]


def test_unsupported_parameter_type_fails_at_definition():
    with pytest.raises(TypeError, match="no JSON schema"):
        @tool
        def bad(x: set) -> None:
            """Bad."""


@pytest.mark.parametrize("arguments, named", [
    ({}, "'query'"),                                      # missing
    ({"query": "a", "color": 1}, "'color'"),              # extra
    ({"query": 3}, "'query'"),                            # wrong type
    ({"query": "a", "top_k": True}, "'top_k'"),           # a bool is not an int
    ({"query": "a", "lang": "fr"}, "'lang'"),             # not in the Literal
    ({"query": "a", "fields": ["x", 2]}, "'fields[1]'"),  # wrong item type
    ('{"query": ', "not valid JSON"),                     # undecodable arguments
    ('["a"]', "JSON object"),                             # not an object
])
def test_bad_arguments_become_an_error_result_naming_the_argument(arguments, named):
    result = search.call(arguments)
    assert result.status == "error" and named in result.error and result.content.startswith("error:")


def test_good_arguments_run_the_tool():
    assert search.call('{"query": "x", "top_k": 2, "lang": null}') == ToolResult("success", '["x", "x"]')
    assert scale_values.call({"values": [1, 2.5], "factor": 2}).content == "[2, 5.0]"


def test_an_exception_inside_a_tool_is_an_error_result():
    @tool
    def broken(x: int) -> int:
        """Always fails."""
        raise RuntimeError("disk on fire")

    result = broken.call({"x": 1})
    assert result.status == "error" and "RuntimeError: disk on fire" in result.error


def test_registry_lists_schemas_and_reports_unknown_tools():
    registry = ToolRegistry([search, calculator])
    assert registry.names == ["search", "calculator"] and len(registry.schemas) == 2
    result = registry.call("weather", {})
    assert result.status == "error" and "unknown tool 'weather'" in result.error and "calculator" in result.error
    with pytest.raises(ValueError, match="already registered"):
        registry.add(calculator)


def test_calculator_evaluates_arithmetic_without_eval():
    assert calculator.call({"expression": "12 * (3 + 4) / 2"}).content == "42"
    assert calculator.call({"expression": "2^10 - sqrt(16)"}).content == "1020"
    assert evaluate_arithmetic("7 // 2 + 7 % 2 + -1") == 3
    for bad in ("__import__('os').system('true')", "open('x')", "1 +", "2 ** 100000"):
        result = calculator.call({"expression": bad})
        assert result.status == "error", bad


class Notes:
    """A toolkit: tools that share the instance's state."""

    def __init__(self):
        self.notes: list[str] = []

    @tool
    def add_note(self, text: str) -> str:
        """Remember a note.

        Args:
            text: the note.
        """
        self.notes.append(text)
        return f"{len(self.notes)} notes"

    @tool(name="list_notes")
    def all_notes(self) -> list[str]:
        """List the notes."""
        return self.notes


def test_a_toolkit_adds_its_methods_bound_to_the_instance():
    notes, registry = Notes(), ToolRegistry()
    registry.add_toolkit(notes)
    assert registry.names == ["add_note", "list_notes"]
    assert list(registry.schemas[0]["function"]["parameters"]["properties"]) == ["text"]  # no self
    assert registry.call("add_note", {"text": "buy milk"}).content == "1 notes"
    assert registry.call("list_notes", {}).content == '["buy milk"]' and notes.notes == ["buy milk"]
    assert "'self'" in registry.call("add_note", {"self": 1, "text": "x"}).error
    with pytest.raises(ValueError, match="no @tool methods"):
        ToolRegistry().add_toolkit(object())
