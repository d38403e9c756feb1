"""Reading files under an allowed directory: text comes back in pages; traversal, links out of the root,
absolute paths, binary, huge and special files are refused with an error that says why."""

from __future__ import annotations

import os

import pytest

from intern_jax.agent.files import FileReader
from intern_jax.agent.tools import ToolRegistry


@pytest.fixture
def tree(tmp_path):
    """``tmp_path/root`` (allowed) beside ``tmp_path/secret.txt`` (not)."""
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "notes.md").write_text("# Notes\nthe launch code is in the other file\n")
    (root / "hello.txt").write_text("hello, 世界\n")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    return root


@pytest.fixture
def files(tree):
    registry = ToolRegistry()
    registry.add_toolkit(FileReader(tree, max_bytes=1000, max_chars=20))
    return registry


def test_text_files_are_read_in_pages(files):
    assert files.call("read_file", {"path": "hello.txt"}).content == "hello, 世界\n"
    first = files.call("read_file", {"path": "docs/notes.md"}).content
    assert first.startswith("# Notes\nthe launch c") and "read on with offset=20" in first
    assert files.call("read_file", {"path": "./docs/../docs/notes.md", "offset": 20}).content.startswith("ode is in")


def test_a_directory_is_listed(files):
    import json

    listing = json.loads(files.call("list_files", {}).content)
    assert listing == [{"name": "docs", "type": "directory"}, {"name": "hello.txt", "type": "file", "bytes": 14}]
    assert json.loads(files.call("list_files", {"path": "docs"}).content)[0]["name"] == "docs/notes.md"


@pytest.mark.parametrize("path", ["../secret.txt", "docs/../../secret.txt", "..", "docs/../../root/../secret.txt"])
def test_traversal_out_of_the_root_is_refused(files, path):
    result = files.call("read_file", {"path": path})
    assert result.status == "error" and "outside the allowed directory" in result.error
    assert "TOP SECRET" not in result.content


def test_an_absolute_path_is_refused_even_inside_the_root(files, tree):
    for path in (str(tree.parent / "secret.txt"), str(tree / "hello.txt")):
        result = files.call("read_file", {"path": path})
        assert result.status == "error" and "absolute path" in result.error


def test_a_symbolic_link_out_of_the_root_is_refused_and_one_inside_is_followed(files, tree):
    os.symlink(tree.parent / "secret.txt", tree / "innocent.txt")
    os.symlink(tree.parent, tree / "up")
    os.symlink("docs/notes.md", tree / "notes-link.md")
    for path in ("innocent.txt", "up/secret.txt"):
        result = files.call("read_file", {"path": path})
        assert result.status == "error" and "symbolic link whose target lies outside" in result.error
        assert "TOP SECRET" not in result.content
    assert files.call("read_file", {"path": "notes-link.md"}).content.startswith("# Notes")
    assert "outside" in files.call("list_files", {"path": "up"}).error


def test_a_component_swapped_for_a_link_after_the_check_is_not_followed(tree):
    reader = FileReader(tree)
    relative = reader.resolve("docs/notes.md")  # checked while docs is a real directory ...
    os.rename(tree / "docs", tree / "docs-old")
    os.symlink(tree.parent, tree / "docs")  # ... then replaced by a link out of the root
    (tree.parent / "notes.md").write_text("outside")
    with pytest.raises(ValueError, match="changed while it was opened"):
        reader._open(relative, directory=False)


def test_binary_huge_missing_and_special_files_are_refused(files, tree):
    (tree / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (tree / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tree / "big.txt").write_text("x" * 1001)
    os.mkfifo(tree / "pipe")
    expected = {"image.png": "is a binary file", "latin1.txt": "is not UTF-8 text",
                "big.txt": "is 1001 bytes, over the 1000-byte limit", "missing.txt": "does not exist",
                "docs": "is a directory", "pipe": "not a regular file", "": "the path is empty"}
    for path, message in expected.items():
        result = files.call("read_file", {"path": path})
        assert result.status == "error" and message in result.error, (path, result.error)
    assert "offset must be 0 or more" in files.call("read_file", {"path": "hello.txt", "offset": -1}).error


def test_the_root_must_be_a_directory(tmp_path):
    with pytest.raises(NotADirectoryError, match="does not exist or is not a directory"):
        FileReader(tmp_path / "nowhere")
