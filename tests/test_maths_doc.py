"""docs/maths.md is in the repository and every "docs/maths.md section N" pointer in the code names a real section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("nnunet_tubeconv", "architectures", "trainers", "benchmarks", "tests")


def _sections() -> dict[int, str]:
    text = (ROOT / "docs" / "maths.md").read_text()
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^## (\d+)\. (.+)$", text, re.MULTILINE)}


def _pointers() -> list[tuple[str, int]]:
    out = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for m in re.finditer(r"docs/maths\.md(?:,)? section (\d+)", path.read_text()):
                out.append((str(path.relative_to(ROOT)), int(m.group(1))))
    return out


def test_every_pointer_names_a_section():
    sections = _sections()
    pointers = _pointers()
    assert len(pointers) >= 7, pointers  # each block module points at its section
    assert [(f, n) for f, n in pointers if n not in sections] == []


def test_each_block_has_its_section_and_nothing_points_at_the_old_spec():
    titles = " ".join(_sections().values())
    for block in ("DSConv", "DSCBlock", "DLK", "DFF", "scSE", "DeformConv", "contract"):
        assert block in titles, (block, titles)
    stale = [str(p.relative_to(ROOT)) for folder in SOURCES for p in (ROOT / folder).rglob("*.py")
             if p != Path(__file__).resolve() and re.search(r"SPEC-blocks|\bSPEC section", p.read_text())]
    assert stale == []
