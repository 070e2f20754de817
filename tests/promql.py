"""Which metrics a Grafana dashboard's PromQL uses, and which a /metrics answer has: what
the dashboard tests compare."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"

IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# PromQL words that are neither functions (followed by "(") nor metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
            "and", "or", "unless", "inf", "nan"}  # fmt: skip


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows too."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out += p.get("panels", [])
    return out


def expressions(path: Path = DASHBOARD) -> list[str]:
    dashboard = json.loads(path.read_text())
    return [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: its identifiers, less string literals,
    label matchers ``{…}``, ranges ``[…]``, grouping label lists, function names (an
    identifier before ``(``), keywords and Grafana's ``$variables``."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)
    names = set()
    for m in IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        word = m.group(0)
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        if m.start() > 0 and text[m.start() - 1] in "0123456789.":
            continue  # the exponent of a number (1e3)
        names.add(word)
    return names


def exposed(metrics_text: str) -> tuple[set[str], set[str]]:
    """(families declared by TYPE lines, names that have a sample) of a /metrics answer."""
    declared, sampled = set(), set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            declared.add(name)
            if kind == "histogram":
                declared |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        elif line and not line.startswith("#"):
            sampled.add(IDENT.match(line).group(0))  # type: ignore[union-attr]
    return declared, sampled
