"""Supervised fine-tuning data: read, validate and render conversations into packed training batches.

Formats: OpenAI-style ``messages`` JSONL (system / user / assistant / tool roles, assistant
``tool_calls``, an optional per-message ``"loss": false``), Alpaca (a JSON array or JSONL of
``instruction`` / ``input`` / ``output``) and plain ``text`` for continued pretraining (a .txt
file of blank-line separated documents, or JSONL with a ``text`` field). Conversations are
rendered with the model's chat template (``Tokenizer.render_chat``): the loss covers exactly
the assistant tokens, closing end token included. Templates without tool support get tool calls
written into the assistant text (``<tool_call>`` JSON). Bad rows are reported with their line
number (``check_file``) and skipped and counted in training. Packing is ``pack_examples``'.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from intern_jax.config import check_fields
from intern_jax.data.config import holdout_problem

FORMATS = ("auto", "messages", "alpaca", "text")
ROLES = ("system", "user", "assistant", "tool")


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """An SFT / continued-pretraining dataset. ``batch_size`` and ``seq_len`` follow the run's.

    ``max_length`` caps one example's tokens (0: ``seq_len``); longer ones are truncated, and a
    conversation whose first learnable token lies beyond it is skipped. ``system`` is put in front
    of conversations that have no system message (empty: the template's default). ``holdout``:
    one usable example in every ``round(1 / holdout)`` (the first included) is kept out of
    training for held-out evaluation (``make_sft_eval_batches``).
    """

    path: str = ""
    format: str = "auto"
    max_length: int = 0
    system: str = ""
    shuffle: bool = True
    seed: int = 0
    num_packing_bins: int = 0
    batch_size: int = 8
    seq_len: int = 512
    holdout: float = 0.0

    def __post_init__(self):
        check_fields(self, "data.")
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r}; use one of {', '.join(FORMATS)}")
        if self.max_length < 0 or self.num_packing_bins < 0:
            raise ValueError(f"data.max_length and data.num_packing_bins must be >= 0 (0: the default), got "
                             f"{self.max_length} and {self.num_packing_bins}")
        if problem := holdout_problem(self.holdout):
            raise ValueError(problem)


@dataclasses.dataclass
class Row:
    """One raw row: where it starts in the file, and its parsed value or why it could not be read."""

    line: int
    value: Any = None
    error: str | None = None


@dataclasses.dataclass
class SFTStats:
    """What loading a dataset kept, truncated and skipped (reason -> count, first lines per reason)."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)

    def skip(self, row: Row, reason: str) -> None:
        key = reason.split(":")[0]
        self.skipped[key] += 1
        lines = self.examples.setdefault(key, [])
        if len(lines) < 5:
            lines.append(row.line)

    def summary(self) -> str:
        text = (f"{self.kept}/{self.rows} rows kept, {self.tokens} tokens ({self.loss_tokens} trained), "
                f"{self.truncated} truncated")
        if self.skipped:
            parts = [f"{n} x {reason} (lines {self.examples[reason]})" for reason, n in self.skipped.most_common()]
            text += "; skipped " + "; ".join(parts)
        return text


# ---------------------------------------------------------------------------
# Reading


def _check_dataset_path(path) -> Path:
    path = Path(path)
    if not str(path) or path == Path("."):
        raise ValueError("no dataset file given; set data.path to a JSONL, JSON or text file")
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a dataset file", str(path))
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist")
    return path


def detect_format(path, setting: str = "data.format") -> str:
    """``messages``, ``alpaca`` or ``text`` from the file's extension and its first record (the whole
    first line, however long). Errors name ``setting``, the knob that states the format instead."""
    path = _check_dataset_path(path)
    if path.suffix in (".txt", ".md"):
        return "text"
    first = b""
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.strip():
                first = raw
                break
    if not first:
        raise ValueError(f"{path} is empty (no records); give a file with at least one record")
    if b"\x00" in first:
        raise ValueError(f"{path} looks like a binary file (it holds NUL bytes); datasets are UTF-8 JSON, JSONL "
                         "or text")
    try:
        head = first.decode("utf-8").lstrip()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: the first record is not UTF-8 text (byte {first[e.start]:#04x}); is this a "
                         "binary file? datasets are UTF-8 JSON, JSONL or text") from None
    if head.startswith("["):
        return "alpaca"
    try:
        obj = json.loads(head)
    except json.JSONDecodeError:
        raise ValueError(
            f"{path}: cannot tell the format from the first record (not JSON); set {setting} to "
            "messages, alpaca or text"
        ) from None
    if isinstance(obj, dict) and "messages" in obj:
        return "messages"
    if isinstance(obj, dict) and "instruction" in obj:
        return "alpaca"
    if isinstance(obj, dict) and "text" in obj:
        return "text"
    raise ValueError(
        f"{path}: the first record has keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}; "
        f"expected 'messages' (chat), 'instruction' (Alpaca) or 'text'; set {setting} explicitly"
    )


def _read_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line number, text, None)`` per line, or ``(line number, None, reason)`` for a line that is
    not UTF-8: one bad byte costs its row, not the file."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, start=1):
            try:
                yield i, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as e:
                yield i, None, f"not UTF-8: byte {raw[e.start]:#04x} at column {e.start + 1}"


def read_rows(path, fmt: str = "auto", setting: str = "data.format") -> Iterator[Row]:
    """Rows of ``path`` with their 1-based starting line; unparsable rows carry ``error``."""
    path = Path(path)
    _check_dataset_path(path)
    fmt = detect_format(path, setting) if fmt == "auto" else fmt
    if fmt == "text" and path.suffix in (".txt", ".md"):
        yield from _text_documents(path)
        return
    with open(path, "rb") as fh:
        is_array = fh.read(4096).lstrip().startswith(b"[")
    if is_array:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte offset {e.start}); a JSON array must be UTF-8 "
                             "throughout") from None
        yield from _json_array(text)
        return
    for i, line, problem in _read_lines(path):
        if problem:
            yield Row(i, error=problem)
        elif line.strip():
            try:
                yield Row(i, json.loads(line))
            except json.JSONDecodeError as e:
                yield Row(i, error=f"invalid JSON: {e.msg} at column {e.colno}")


def _text_documents(path: Path) -> Iterator[Row]:
    start, lines, bad = None, [], None
    for i, line, problem in _read_lines(path):
        if problem or line.strip():
            start = start or i
            bad = bad or (f"{problem} (line {i})" if problem else None)
            lines.append(line or "")
        elif lines:
            yield Row(start, error=bad) if bad else Row(start, {"text": "\n".join(lines)})
            start, lines, bad = None, [], None
    if lines:
        yield Row(start, error=bad) if bad else Row(start, {"text": "\n".join(lines)})


def _json_array(text: str) -> Iterator[Row]:
    """Items of a JSON array, each with the line it starts on (a broken array stops with one error row)."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line = text.count("\n", 0, pos) + 1
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield Row(line, error=f"invalid JSON: {e.msg} (the rest of the array cannot be read)")
            return
        yield Row(line, value)


# ---------------------------------------------------------------------------
# Validation


def _tool_call_error(call) -> str | None:
    if not isinstance(call, dict):
        return "tool call is not an object"
    if call.get("type", "function") == "interpreter":
        return None if isinstance(call.get("code"), str) else "interpreter tool call needs a string 'code'"
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return "tool call needs function.name (a non-empty string)"
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError:
            return f"tool call {fn['name']!r} has arguments that are not valid JSON"
    elif not isinstance(args, dict):
        return f"tool call {fn['name']!r} arguments must be a JSON object or a JSON string"
    return None


def messages_error(messages) -> str | None:
    """Why ``messages`` cannot be trained on, or None. Reasons start with a short key before ':'."""
    if not isinstance(messages, list) or not messages:
        return "no messages: 'messages' must be a non-empty list"
    learnable = False
    for i, m in enumerate(messages):
        where = f"message {i}"
        if not isinstance(m, dict):
            return f"bad message: {where} is not an object"
        role = m.get("role")
        if role not in ROLES:
            return f"bad role: {where} has role {role!r}; use one of {', '.join(ROLES)}"
        content, calls = m.get("content"), m.get("tool_calls")
        if content is not None and not isinstance(content, str):
            return f"bad content: {where} content must be a string"
        if calls is not None:
            if role != "assistant":
                return f"bad tool call: {where} ({role}) has tool_calls; only assistant messages call tools"
            if not isinstance(calls, list) or not calls:
                return f"bad tool call: {where} tool_calls must be a non-empty list"
            for call in calls:
                err = _tool_call_error(call)
                if err:
                    return f"bad tool call: {where}: {err}"
        if not content and not calls and role != "tool":
            return f"empty message: {where} ({role}) has no content"
        if "loss" in m and not isinstance(m["loss"], bool):
            return f"bad loss flag: {where} 'loss' must be true or false"
        if role == "system" and i != 0:
            return f"misplaced system: {where} is a system message after the start"
        if role == "tool":
            prev = messages[i - 1] if i else {}
            if not (prev.get("role") == "tool" or prev.get("tool_calls")):
                return f"orphan tool result: {where} does not follow an assistant tool call"
        if role == "assistant" and m.get("loss", True):
            learnable = True
    if not learnable:
        return "nothing to learn: no assistant message with loss"
    return None


def row_messages(row: Row, fmt: str, system: str = "") -> tuple[list[dict] | None, str | None]:
    """(messages, None) for a chat or Alpaca row, or (None, reason)."""
    if row.error:
        return None, row.error
    obj = row.value
    if fmt == "alpaca":
        if not isinstance(obj, dict):
            return None, "bad row: an Alpaca row must be an object"
        inst, inp, out = obj.get("instruction"), obj.get("input", ""), obj.get("output")
        if not isinstance(inst, str) or not inst.strip():
            return None, "bad alpaca row: 'instruction' must be a non-empty string"
        if not isinstance(out, str) or not out.strip():
            return None, "bad alpaca row: 'output' must be a non-empty string"
        if inp is not None and not isinstance(inp, str):
            return None, "bad alpaca row: 'input' must be a string"
        user = inst if not inp else f"{inst}\n\n{inp}"
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": out}]
        if isinstance(obj.get("system"), str) and obj["system"]:
            messages.insert(0, {"role": "system", "content": obj["system"]})
    else:
        if not isinstance(obj, dict) or "messages" not in obj:
            return None, "bad row: expected an object with a 'messages' list"
        messages = obj["messages"]
    err = messages_error(messages)
    if err:
        return None, err
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return messages, None


def check_file(path, fmt: str = "auto", tokenizer=None, max_length: int = 0,
               format_setting: str = "data.format") -> tuple[SFTStats, list[tuple[int, str]]]:
    """Every bad row of ``path`` as (line, reason), plus the stats loading would report.

    Without a tokenizer only the structure is checked; with one, rows are also rendered.
    ``format_setting`` is what errors call the format knob (check_dataset.py's ``--format``).
    """
    _check_dataset_path(path)
    fmt = detect_format(path, format_setting) if fmt == "auto" else fmt
    stats, bad = SFTStats(), []
    for row in read_rows(path, fmt):
        stats.rows += 1
        reason = _row_problem(row, fmt, tokenizer, max_length, stats)
        if reason:
            stats.skip(row, reason)
            bad.append((row.line, reason))
    return stats, bad


def _row_problem(row, fmt, tokenizer, max_length, stats, system="", out=None):
    if fmt == "text":
        if row.error:
            return row.error
        if not isinstance(row.value, dict) or not isinstance(row.value.get("text"), str) or not row.value["text"]:
            return "bad text row: expected a non-empty 'text' string"
        try:
            example = render_text(tokenizer, row.value["text"]) if tokenizer is not None else None
        except ValueError as e:  # text that is not valid Unicode
            return f"bad text: {e}"
    else:
        messages, reason = row_messages(row, fmt, system)
        if reason:
            return reason
        example = None
        if tokenizer is not None:
            try:
                example = render_messages(tokenizer, messages)
            except Exception as e:  # a template that rejects the conversation (jinja raise_exception etc.)
                return f"template error: {e}"
    if example is None:
        stats.kept += 1
        return None
    if max_length and len(example["tokens"]) > max_length:
        first = int(np.argmax(example["token_loss"] > 0)) if example["token_loss"].any() else len(example["tokens"])
        if fmt != "text" and first >= max_length:
            return f"too long: the first assistant token is at {first}, beyond max_length {max_length}"
        example = {k: v[:max_length] for k, v in example.items()}
        stats.truncated += 1
    stats.kept += 1
    stats.tokens += len(example["tokens"])
    stats.loss_tokens += int(example["token_loss"][1:].sum())
    if out is not None:
        out.append(example)
    return None


# ---------------------------------------------------------------------------
# Rendering


def _supports_tools(tokenizer) -> bool:
    template = tokenizer.chat_template
    return template is None or "tool_calls" in template  # None: the InternLM2 template, which has them


def _inline_tool_calls(messages: list[dict]) -> list[dict]:
    """Tool calls written into the assistant text, for templates that ignore ``tool_calls``."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            parts = [m.get("content") or ""]
            for call in m["tool_calls"]:
                if call.get("type") == "interpreter":
                    payload = {"name": "interpreter", "arguments": {"code": call["code"]}}
                else:
                    args = call["function"].get("arguments", {})
                    payload = {"name": call["function"]["name"],
                               "arguments": json.loads(args) if isinstance(args, str) else args}
                parts.append(f"<tool_call>\n{json.dumps(payload, ensure_ascii=False)}\n</tool_call>")
            m = {k: v for k, v in m.items() if k != "tool_calls"}
            m["content"] = "\n".join(p for p in parts if p)
        elif m.get("content") is None:
            m = {**m, "content": ""}
        out.append(m)
    return out


def render_messages(tokenizer, messages: list[dict]) -> dict[str, np.ndarray]:
    """``{"tokens": int32[n], "token_loss": float32[n]}``: 1 on assistant tokens (end token included)."""
    if not _supports_tools(tokenizer):
        messages = _inline_tool_calls(messages)
    ids, mask = tokenizer.render_chat(messages)
    return {"tokens": np.asarray(ids, np.int32), "token_loss": np.asarray(mask, np.float32)}


def render_text(tokenizer, text: str) -> dict[str, np.ndarray]:
    """A continued-pretraining document: BOS + text + EOS (where the tokenizer has them), all learned."""
    ids = tokenizer.encode(text)
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    if tokenizer.eos_id is not None:
        ids = [*ids, tokenizer.eos_id]
    return {"tokens": np.asarray(ids, np.int32), "token_loss": np.ones(len(ids), np.float32)}


# ---------------------------------------------------------------------------
# Datasets


def load_examples(cfg: SFTDataConfig, tokenizer, *, progress: bool = False) -> tuple[list[dict], SFTStats]:
    """All usable examples of ``cfg.path`` rendered (bad rows skipped and counted in the stats)."""
    fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
    max_length = cfg.max_length or cfg.seq_len
    stats, examples = SFTStats(), []
    rows = read_rows(cfg.path, fmt)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        rows = tqdm(rows, desc=f"rendering {Path(cfg.path).name}", unit="row")
    for row in rows:
        stats.rows += 1
        reason = _row_problem(row, fmt, tokenizer, max_length, stats, cfg.system, examples)
        if reason:
            stats.skip(row, reason)
    if not examples:
        raise ValueError(f"{cfg.path}: no usable rows ({stats.summary()}); run scripts/check_dataset.py on it")
    return examples, stats


def make_sft_iterator(cfg: SFTDataConfig, tokenizer, *, process_index: int = 0, process_count: int = 1,
                      progress: bool = False, loaded: tuple[list[dict], SFTStats] | None = None):
    """(grain iterator of contract batches, stats): this process's ``batch_size // process_count`` rows.

    Examples (all usable ones but the held-out ones) are shuffled per epoch (seeded) and repeat
    forever; the iterator's state goes into training checkpoints, so a resumed run continues with
    the next batch. ``loaded``: ``load_examples``'s result, when the caller has it already.
    """
    import grain  # noqa: PLC0415  (grain: only to read data; the config stays importable without it)

    from intern_jax.data.packing import pack_examples  # noqa: PLC0415
    from intern_jax.data.pipeline import HoldoutSplit  # noqa: PLC0415

    if cfg.batch_size % process_count:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {process_count} processes")
    examples, stats = loaded or load_examples(cfg, tokenizer, progress=progress)
    if cfg.holdout > 0:
        examples = HoldoutSplit(examples, cfg.holdout, heldout=False)
    ds = grain.MapDataset.source(examples)
    if process_count > 1:
        ds = ds[process_index::process_count]
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat()
    packed = pack_examples(
        ds.to_iter_dataset(), cfg.seq_len, cfg.batch_size // process_count,
        num_packing_bins=cfg.num_packing_bins or None, seed=cfg.seed,
    )
    return iter(packed), stats


def make_sft_eval_batches(cfg: SFTDataConfig, tokenizer, *, path: str = "", process_index: int = 0,
                          process_count: int = 1, max_batches: int = 0,
                          loaded: tuple[list[dict], SFTStats] | None = None) -> dict[str, list[dict]]:
    """Held-out evaluation batches, ``{dataset name: this process's rows of each batch}``.

    Without ``path``: the ``cfg.holdout`` examples of ``cfg.path`` (``loaded`` may hold them
    already); with ``path``: every usable example of that file, rendered with ``cfg``'s
    settings. Examples are packed in order, at most ``max_batches`` batches (0: all).
    """
    import grain  # noqa: PLC0415

    from intern_jax.data.pipeline import HoldoutSplit, packed_in_order  # noqa: PLC0415

    if cfg.batch_size % process_count:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {process_count} processes")
    if path:
        examples, _ = load_examples(dataclasses.replace(cfg, path=str(path)), tokenizer)
    elif cfg.holdout > 0:
        examples = HoldoutSplit((loaded or load_examples(cfg, tokenizer))[0], cfg.holdout, heldout=True)
    else:
        raise ValueError("evaluation needs held-out examples: set data.holdout (e.g. 0.05) or eval.path")
    ds = grain.MapDataset.source(examples)[process_index::process_count]
    batches = packed_in_order(ds.to_iter_dataset(), cfg.seq_len, cfg.batch_size // process_count,
                              num_packing_bins=cfg.num_packing_bins or None, max_batches=max_batches)
    return {Path(path or cfg.path).stem: batches}
