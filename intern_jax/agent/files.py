"""Reading files under one allowed directory: the ``read_file`` and ``list_files`` tools.

``FileReader(root)`` is a toolkit. Paths are relative to ``root``; a path is refused, with an error that
says why, when it is absolute, when it leads outside ``root`` (``..``, or a symbolic link whose target
lies outside), when it is not a regular file (a directory, a FIFO, a device), when the file is larger
than ``max_bytes`` or is not UTF-8 text (a NUL byte or undecodable bytes). Links inside ``root`` are
followed. The check and the open cannot be raced: the resolved path is opened one component at a time
from a descriptor of ``root`` with ``O_NOFOLLOW``, so a component swapped for a link after the check
makes the open fail instead of leaving the root. Text longer than ``max_chars`` comes back in pages
(``offset``). Nothing here writes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from intern_jax.agent.tools import tool

BINARY_SNIFF = 8192  # a NUL byte in the first 8 KiB marks a binary file (as git and grep decide)


class FileReader:
    """Read-only access to the files under ``root``: a toolkit with the tools ``read_file`` and ``list_files``."""

    def __init__(self, root, *, max_bytes: int = 1 << 20, max_chars: int = 8000, max_entries: int = 200):
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"the allowed directory {root} does not exist or is not a directory")
        self.max_bytes, self.max_chars, self.max_entries = max_bytes, max_chars, max_entries

    def resolve(self, path: str) -> str:
        """The path relative to ``root`` that ``path`` names after links are followed; ValueError if outside."""
        if not isinstance(path, str) or not path.strip():
            raise ValueError("the path is empty; give a path relative to the allowed directory, e.g. 'notes.txt'")
        if "\0" in path:
            raise ValueError(f"the path {path!r} contains a NUL character")
        if os.path.isabs(path):
            raise ValueError(f"{path!r} is an absolute path; give a path relative to the allowed directory")
        real = os.path.realpath(os.path.join(self.root, path))
        if os.path.commonpath([self.root, real]) != self.root:
            how = "is a symbolic link whose target lies" if os.path.normpath(path).split(os.sep)[0] != ".." else "leads"
            raise ValueError(f"{path!r} {how} outside the allowed directory; only files under it can be read")
        return os.path.relpath(real, self.root)

    def _open(self, relative: str, directory: bool) -> int:
        """A descriptor of ``relative`` (no links in it) opened component by component from ``root``."""
        parts = [] if relative == "." else relative.split(os.sep)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                flags |= os.O_DIRECTORY if not last or directory else os.O_NONBLOCK  # a FIFO must not block us
                try:
                    child = os.open(part, flags, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ValueError(f"{relative!r} changed while it was opened (a component became a link or "
                                         "a file); try again") from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def read_text(self, path: str, offset: int = 0) -> str:
        relative = self.resolve(path)
        if offset < 0:
            raise ValueError(f"offset must be 0 or more, got {offset}")
        if not os.path.lexists(os.path.join(self.root, relative)):
            raise FileNotFoundError(f"{path!r} does not exist under the allowed directory")
        fd = self._open(relative, directory=False)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(f"{path!r} is a directory; list it with list_files")
            raise ValueError(f"{path!r} is not a regular file (a device, FIFO or socket); it is not read")
        with os.fdopen(fd, "rb") as f:
            if info.st_size > self.max_bytes:
                raise ValueError(f"{path!r} is {info.st_size} bytes, over the {self.max_bytes}-byte limit of this "
                                 "tool; it is not read")
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:  # grew since fstat
            raise ValueError(f"{path!r} is over the {self.max_bytes}-byte limit of this tool; it is not read")
        if b"\0" in data[:BINARY_SNIFF]:
            raise ValueError(f"{path!r} is a binary file (it has NUL bytes); only text files are read")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path!r} is not UTF-8 text (undecodable byte at offset {e.start}); only text "
                             "files are read") from None
        if offset > len(text):
            raise ValueError(f"offset {offset} is past the end of {path!r} ({len(text)} characters)")
        page = text[offset:offset + self.max_chars]
        if offset + self.max_chars < len(text):
            page += (f"\n... ({len(text) - offset - self.max_chars} more characters; read on with "
                     f"offset={offset + self.max_chars})")
        return page

    def list_dir(self, path: str = ".") -> list[dict]:
        relative = self.resolve(path)
        if not os.path.isdir(os.path.join(self.root, relative)):
            raise NotADirectoryError(f"{path!r} is not a directory under the allowed directory")
        fd = self._open(relative, directory=True)
        try:
            names = sorted(os.listdir(fd))
            entries = []
            for name in names[:self.max_entries]:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                kind = ("directory" if stat.S_ISDIR(info.st_mode) else "file" if stat.S_ISREG(info.st_mode)
                        else "link" if stat.S_ISLNK(info.st_mode) else "other")
                entry = {"name": str(Path(relative, name)) if relative != "." else name, "type": kind}
                if kind == "file":
                    entry["bytes"] = info.st_size
                entries.append(entry)
        finally:
            os.close(fd)
        if len(names) > self.max_entries:
            entries.append({"name": f"... {len(names) - self.max_entries} more entries", "type": "truncated"})
        return entries

    @tool(name="read_file")
    def read_file(self, path: str, offset: int = 0) -> str:
        """Read a text file under the allowed directory.

        Args:
            path: the file's path relative to the allowed directory, e.g. "docs/notes.md".
            offset: the character to start from, for reading a long file in pages.
        """
        return self.read_text(path, offset)

    @tool(name="list_files")
    def list_files(self, path: str = ".") -> list[dict]:
        """List the files and directories in a directory under the allowed directory.

        Args:
            path: the directory relative to the allowed directory; "." is the allowed directory itself.
        """
        return self.list_dir(path)
