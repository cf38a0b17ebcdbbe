"""The house rules of the layout, checked on the source (AST), so an import against the grain fails CI.

* ``collectors/`` (what clients run) imports nothing from ``simulator/``: what a
  client computes lives in ``collectors/stats.py`` and the simulator imports it;
* ``monitor/signals/`` (pure statistics) imports nothing from the API, the
  store, the wire schemas, the detectors or any web/database library;
* ``monitor/detectors/`` imports nothing from the API, the store or a
  web/database library (the wire schemas only to build its inputs);
* no function under ``monitor/`` is longer than 120 lines, no detector module
  longer than about 300.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_AND_DB = ("fastapi", "starlette", "sqlmodel", "sqlalchemy", "httpx", "uvicorn", "psycopg")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at any depth (inside functions too), as (line, dotted name)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def _violations(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = [
            f"line {line}: {name}"
            for line, name in _imports(path)
            if any(name == f or name.startswith(f + ".") for f in forbidden)
        ]
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("collectors", ("simulator",)),
        (
            "monitor/signals",
            (
                "monitor.api",
                "monitor.store",
                "monitor.schemas",
                "monitor.detectors",
                "monitor.engine",
                "monitor.exporter",
                "monitor.app",
                *WEB_AND_DB,
            ),
        ),
        ("monitor/detectors", ("monitor.api", "monitor.store", "monitor.engine", *WEB_AND_DB)),
    ],
)
def test_imports_go_with_the_grain(package: str, forbidden: tuple[str, ...]) -> None:
    assert _violations(package, forbidden) == {}


def test_the_rule_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from simulator.stats import x\n    import simulator\n")
    assert _imports(p) == [(2, "simulator.stats"), (2, "simulator.stats.x"), (3, "simulator")]


def test_functions_under_monitor_are_short_and_detector_modules_readable_in_one_sitting() -> None:
    long_functions = []
    for path in sorted((ROOT / "monitor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 120:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.name} ({length} lines)")
    assert long_functions == []
    long_modules = [
        f"{p.name} ({n} lines)"
        for p in sorted((ROOT / "monitor" / "detectors").glob("*.py"))
        if p.name not in ("base.py", "state.py", "registry.py", "analyzer.py", "__init__.py")
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > 320
    ]
    assert long_modules == []
