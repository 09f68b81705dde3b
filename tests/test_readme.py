"""The README's list of status fields is the status record's, docstrings included."""

from __future__ import annotations

import ast
import dataclasses
import itertools
import re
import typing
from pathlib import Path

from vidring.loader import status

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- status fields -->", "<!-- /status fields -->"


def _docstrings() -> dict[tuple[str, str], str]:
    """(class, field) -> the string literal written under the field in loader/status.py."""
    tree = ast.parse((ROOT / "loader" / "status.py").read_text())
    docs = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
                docs[(cls.name, node.target.id)] = str(after.value.value)
    return docs


def status_field_lines(cls: type = status.StatusRecord, prefix: str = "") -> list[str]:
    docs = _docstrings()
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        lines.append(f"| `{prefix}{f.name}` | {docs[(cls.__name__, f.name)]} |")
        nested = [t for t in (hints[f.name], *typing.get_args(hints[f.name]))
                  if dataclasses.is_dataclass(t)]
        for t in nested:
            assert isinstance(t, type)
            lines += status_field_lines(t, f"{prefix}{f.name}.")
    return lines


def test_every_status_field_has_a_docstring() -> None:
    docs = _docstrings()
    for cls in (status.StatusRecord, status.SlotCounts, status.WorkerCounts,
                status.ErrorSummary, status.FileError):
        for f in dataclasses.fields(cls):
            assert (cls.__name__, f.name) in docs, f"{cls.__name__}.{f.name}"


def test_the_readme_lists_exactly_the_status_fields() -> None:
    readme = (ROOT / "README.md").read_text()
    match = re.search(re.escape(START) + r"\n(.*?)\n" + re.escape(END), readme, re.S)
    assert match, f"README.md has no {START} section"
    listed = [line for line in match.group(1).splitlines() if line.startswith("| `")]
    assert listed == status_field_lines()
