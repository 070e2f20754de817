"""The README and docs stand on their own: every relative link resolves inside the
repository (a user's clone has nothing beside it)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_every_relative_link_resolves_inside_the_repo() -> None:
    bad = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"^[a-z]+://|^mailto:|^#", target):
                continue
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.exists() or ROOT not in path.parents:
                bad.append(f"{doc.relative_to(ROOT)}: {target}")
    assert bad == []


def test_no_doc_points_outside_the_repo() -> None:
    for doc in DOCS:
        assert "../shared" not in doc.read_text(), doc
