"""The rooms import downward only: command_line above compressor and bench; bench above compressor; compressor above
graph_passes; graph_passes above nothing of ours but user_errors; olive_pass (the Olive pass) beside bench, above
compressor, and imported by none of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"command_line", "compressor", "bench", "graph_passes", "user_errors", "olive_pass"}
ALLOWED = {
    "user_errors": set(),
    "graph_passes": {"user_errors"},
    "compressor": {"user_errors", "graph_passes"},
    "bench": {"user_errors", "graph_passes", "compressor"},
    "command_line": {"user_errors", "graph_passes", "compressor", "bench"},
    "olive_pass": {"user_errors", "graph_passes", "compressor"},
}


def imported_packages(folder: Path) -> set[str]:
    found = set()
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            found |= {n.split(".")[0] for n in names} & OURS
    return found - {folder.name}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_rooms_below_it(package):
    assert imported_packages(ROOT / package) <= ALLOWED[package]
