"""Tests wait for conditions, never for a fixed time (see tests/waiting.py).

Every .py file under tests/ is parsed; a call of ``time.sleep`` or ``asyncio.sleep`` (however
imported) or a fresh ``threading.Event().wait(...)`` (a sleep in disguise) fails this test,
except in tests/waiting.py and on a line marked ``# the sleep is what is tested: <why>``.
Strings are not calls: a job script's ``time.sleep`` inside a string is not a test sleep.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ALLOWED = {TESTS / "waiting.py"}
MARKER = "# the sleep is what is tested:"
SLEEPS = {("time", "sleep"), ("asyncio", "sleep")}


def _marked_lines(source: str) -> set[int]:
    """Lines with a comment ``# the sleep is what is tested: <reason>``."""
    marked = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        reason = tok.string.removeprefix(MARKER).strip()
        if tok.type == tokenize.COMMENT and tok.string.startswith(MARKER) and reason:
            marked.add(tok.start[0])
    return marked


def _sleep_name(call: ast.Call, modules: dict[str, str], names: dict[str, str]) -> str | None:
    """``time.sleep``/``asyncio.sleep``/``Event().wait`` if ``call`` is one of them."""
    f = call.func
    if isinstance(f, ast.Name) and f.id in names:
        return names[f.id]
    if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
        module = modules.get(f.value.id)
        if module is not None and (module, f.attr) in SLEEPS:
            return f"{module}.{f.attr}"
    if isinstance(f, ast.Attribute) and f.attr == "wait" and isinstance(f.value, ast.Call):
        made = f.value.func
        if (isinstance(made, ast.Attribute) and made.attr == "Event") or (
            isinstance(made, ast.Name) and made.id == "Event"
        ):
            return "Event().wait"
    return None


def fixed_sleeps(source: str, filename: str = "<test>") -> list[tuple[int, str]]:
    """(line, what) of every unmarked sleep call in ``source``."""
    tree = ast.parse(source, filename)
    modules: dict[str, str] = {}  # local name → "time"/"asyncio"
    names: dict[str, str] = {}  # local name → "time.sleep"/"asyncio.sleep"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("time", "asyncio"):
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module in ("time", "asyncio"):
            for alias in node.names:
                if (node.module, alias.name) in SLEEPS:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    marked = _marked_lines(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            what = _sleep_name(node, modules, names)
            lines = set(range(node.lineno, (node.end_lineno or node.lineno) + 1))
            if what is not None and not lines & marked:
                found.append((node.lineno, what))
    return sorted(found)


def test_no_fixed_sleeps_in_tests() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path in ALLOWED or ".venv" in path.parts:
            continue
        rel = path.relative_to(TESTS.parent)
        for line, what in fixed_sleeps(path.read_text(), str(path)):
            offenders.append(f"{rel}:{line}: {what}(...)")
    assert not offenders, (
        "fixed sleeps in tests: wait for the condition instead (tests/waiting.py), or, "
        f"where the sleep itself is what is tested, mark the line '{MARKER} <why>':\n"
        + "\n".join(offenders)
    )


def test_the_check_sees_every_spelling_and_spares_strings_and_marked_lines() -> None:
    source = (
        "import asyncio\n"
        "import threading\n"
        "import time\n"
        "import time as clock\n"
        "from time import sleep\n"
        "from asyncio import sleep as nap\n"
        "time.sleep(1)\n"  # 7
        "clock.sleep(1)\n"  # 8
        "sleep(1)\n"  # 9
        "async def f():\n"
        "    await asyncio.sleep(1)\n"  # 11
        "    await nap(1)\n"  # 12
        "threading.Event().wait(0.3)\n"  # 13
        "SCRIPT = 'import time\\ntime.sleep(60)\\n'\n"
        "time.sleep(1.1)  # the sleep is what is tested: a 1 s token TTL\n"
        "time.sleep(2)  # the sleep is what is tested:\n"  # 16: no reason given
        "done = threading.Event()\n"
        "done.wait(5)\n"
    )
    assert fixed_sleeps(source) == [
        (7, "time.sleep"),
        (8, "time.sleep"),
        (9, "time.sleep"),
        (11, "asyncio.sleep"),
        (12, "asyncio.sleep"),
        (13, "Event().wait"),
        (16, "time.sleep"),
    ]
