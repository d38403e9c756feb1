"""The scripts' shared command-line entry: a user's mistake ends in one clear line, not a traceback.

``@entry("generate.py")`` wraps a script's ``main(argv) -> int``. Errors that describe bad input
(``ConfigError`` and other ``ValueError``s, missing, unreadable or misplaced files: ``OSError``;
undecodable text: ``UnicodeError``) print ``generate.py: error: <message>`` on stderr and return 2;
Ctrl-C returns 130, a closed stdout pipe 141 (quietly). ``--debug`` (``add_debug_flag``; every
script has it) or ``INTERN_JAX_DEBUG=1`` lets the exception through with its traceback. Run from a
command line, a script keeps the XLA programs it compiles in a persistent cache
(``compilation_cache_dir``), so the next run of the same model and shapes reads them back. The checks
several scripts share live here too (``output_dir``, ``utf8_text``, ``sampling_params``). This
module imports nothing heavy and knows no script's own flags.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

DEBUG_ENV = "INTERN_JAX_DEBUG"
CACHE_ENV = "INTERN_JAX_COMPILATION_CACHE"  # a directory, or 0/off: where compiled programs are kept
CACHE_MAX_BYTES = 4 << 30  # jax drops the least recently used programs past this size
BAD_INPUT = 2
INTERRUPTED = 130  # 128 + SIGINT, as shells report it
BROKEN_PIPE = 141  # 128 + SIGPIPE

_OS_HINTS = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free space or choose another path",
    errno.EISDIR: "a file was expected here",
    errno.ENOTDIR: "a directory was expected here (or a parent of the path is a file)",
}


def add_debug_flag(parser) -> None:
    """The ``--debug`` flag that ``entry`` reads (listed in every script's ``--help``)."""
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, show the full traceback (also: {DEBUG_ENV}=1)")


def debug_requested(argv) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def describe(error: BaseException) -> str:
    """One line for a user: the project's own messages as they are, OS errors with their path and a hint."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror.lower()}"
        if error.filename2 is not None:
            text = f"{error.filename} -> {error.filename2}: {error.strerror.lower()}"
        hint = _OS_HINTS.get(error.errno)
        return f"{text}; {hint}" if hint else text
    if isinstance(error, UnicodeDecodeError):
        return (f"input is not valid UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                "convert it to UTF-8")
    return str(error) or type(error).__name__


def entry(prog: str) -> Callable:
    """Decorate ``main(argv=None) -> int``: bad input -> one line and exit status 2, Ctrl-C -> 130."""

    def wrap(main: Callable) -> Callable:
        @functools.wraps(main)
        def run(argv=None) -> int:
            if argv is None:  # a real command line (tests call main with a list and keep their own settings)
                use_compilation_cache()
            if debug_requested(sys.argv[1:] if argv is None else list(argv)):
                return main(argv)
            _drop_closed_loop_reports()
            try:
                return main(argv)
            except KeyboardInterrupt as e:
                print(f"\n{prog}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
                return INTERRUPTED
            except BrokenPipeError:  # the reader of stdout went away (`generate.py ... | head`): stop quietly
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return BROKEN_PIPE
            except (ValueError, OSError, UnicodeError) as e:  # ConfigError is a ValueError
                _quiet_abandoned_work()
                print(f"{prog}: error: {describe(e)}", file=sys.stderr, flush=True)
                if argv is None:  # a real command line: the message above is the last word
                    _silence_stderr()
                return BAD_INPUT

        return run

    return wrap


def compilation_cache_dir() -> Path | None:
    """Where the scripts keep compiled XLA programs between runs: ``$INTERN_JAX_COMPILATION_CACHE``, else
    ``$XDG_CACHE_HOME/intern_jax/xla`` (``~/.cache/intern_jax/xla``); None when that variable is 0 / off
    or when ``JAX_COMPILATION_CACHE_DIR`` is set (jax then uses that directory itself)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in ("0", "off", "false", "no") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "intern_jax" / "xla"


def use_compilation_cache() -> Path | None:
    """Turn on jax's persistent compilation cache in ``compilation_cache_dir()`` (programs that took a
    second or more to compile, at most ``CACHE_MAX_BYTES`` in all); the directory, or None when off or
    not writable (the run then compiles as usual). Applies to compiles after it: call it first."""
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is not writable")
    except OSError as e:
        print(f"warning: compiled programs are not cached ({describe(e)}); set {CACHE_ENV} to a writable "
              f"directory, or to off", file=sys.stderr)
        return None
    if "jax" in sys.modules:  # already imported: its settings are read at the first compile
        import jax

        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    else:  # read when jax is imported; scripts that never import it pay nothing
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
        os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(CACHE_MAX_BYTES)
    return path


def _drop_closed_loop_reports() -> None:
    """When a checkpoint read fails, orbax closes its event loop while tensorstore's threads still
    complete the other reads; each completion calls ``call_soon_threadsafe`` on the closed loop and
    Python reports the ``RuntimeError('Event loop is closed')`` through ``sys.unraisablehook``. Those
    reports (and only those) are dropped, as are asyncio's reports of the other reads' failures
    (``OrphanedReadErrors``): the failed read itself reaches the script as an exception."""
    previous = sys.unraisablehook

    def hook(report):
        if isinstance(report.exc_value, RuntimeError) and str(report.exc_value) == "Event loop is closed":
            return
        previous(report)

    if getattr(previous, "_intern_jax", False):
        return
    hook._intern_jax = True
    sys.unraisablehook = hook
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, OrphanedReadErrors) for f in asyncio_log.filters):
        asyncio_log.addFilter(OrphanedReadErrors())


class OrphanedReadErrors(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" reports of orbax's checkpoint reads. When one
    read of a checkpoint fails, its siblings fail too, as tasks nobody awaits any more; asyncio reports each
    whenever it is collected, which can be before the script prints its error line. The failed read itself
    reaches the loader as an exception (and the user as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Task exception was never retrieved") or not record.exc_info:
            return True
        tb = record.exc_info[1].__traceback__ if record.exc_info[1] is not None else None
        while tb is not None:
            if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
                return False
            tb = tb.tb_next
        return True


def _quiet_abandoned_work() -> None:
    """The script is ending on its error: reads a failed load left behind report their own failures
    when collected at exit (asyncio's "exception was never retrieved", "Exception ignored in
    <coroutine ...>"); the user gets the one line instead."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    sys.unraisablehook = lambda report: None


def _silence_stderr() -> None:
    """After the error line nothing else reaches stderr: threads of native libraries (tensorstore's
    reads under orbax) may still write there directly until the interpreter stops."""
    sys.stderr.flush()
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


def output_dir(path, flag: str = "--output") -> Path:
    """``path`` checked as a directory to write into (it may not exist yet): not a file, no file among
    its parents, writable. The error names ``flag`` and what to do."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a directory; give a directory (new or existing)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {path}: {existing} is a file, not a directory; give a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: {existing} is not writable; choose a directory you can write to")
    return path


def utf8_text(text: str, what: str) -> str:
    """``text`` with bytes that were not valid UTF-8 (Python keeps them in command-line arguments
    and stdin as lone surrogates) replaced by U+FFFD, with a warning naming ``what``; valid text
    comes back unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # lone surrogates that did not come from undecodable bytes
        fixed = text.encode("utf-8", "replace").decode("utf-8")
    count = sum(1 for c in text if "\ud800" <= c <= "\udfff")
    print(f"warning: {what} is not valid UTF-8: {count} byte(s) replaced with U+FFFD", file=sys.stderr)
    return fixed


def sampling_params(**values):
    """``SamplingParams(**values)`` for the scripts whose flags carry the same names (``top_k`` is
    ``--top-k``): an invalid value names its flag."""
    from intern_jax.inference.sampling import SamplingError, SamplingParams  # noqa: PLC0415  (imports jax)

    try:
        return SamplingParams(**values)
    except SamplingError as e:
        raise ValueError(f"--{e.field.replace('_', '-')} {e.detail}") from None
