"""docs/explanation/maths.md is in the repository and every "docs/explanation/maths.md section N" pointer in the code
names a real section."""

from __future__ import annotations

import re
from pathlib import Path

from support import REPO_ROOT

ROOT = REPO_ROOT
MATHS = ROOT / "docs" / "explanation" / "maths.md"
SOURCES = ("nnunet_tubeconv", "architectures", "trainers", "benchmarks", "tests")
#: a pointer as the code writes it; the old location (docs/maths.md, before docs/ was laid out by purpose) is matched
#: too, so that a stale pointer is reported by name rather than missed
_POINTER = re.compile(r"docs/(explanation/)?maths\.md(?:,)? section (\d+)")
_OLD_PATH = re.compile(r"docs/maths\.md")


def _sources() -> list[Path]:
    return [p for folder in SOURCES for p in sorted((ROOT / folder).rglob("*.py"))]


def _sections() -> dict[int, str]:
    text = MATHS.read_text()
    return {int(m.group(1)): m.group(2) for m in re.finditer(r"^## (\d+)\. (.+)$", text, re.MULTILINE)}


def _pointers() -> list[tuple[str, int]]:
    return [(str(path.relative_to(ROOT)), int(m.group(2)))
            for path in _sources() for m in _POINTER.finditer(path.read_text())]


def test_every_pointer_names_a_section():
    sections = _sections()
    pointers = _pointers()
    assert len(pointers) >= 7, pointers  # each block module points at its section
    assert [(f, n) for f, n in pointers if n not in sections] == []


def test_no_pointer_names_the_old_location():
    stale = sorted({str(p.relative_to(ROOT)) for p in _sources()
                    if p != Path(__file__).resolve() and _OLD_PATH.search(p.read_text())})
    assert stale == [], "docs/maths.md moved to docs/explanation/maths.md"


def test_each_block_has_its_section_and_nothing_points_at_the_old_spec():
    titles = " ".join(_sections().values())
    for block in ("DSConv", "DSCBlock", "DLK", "DFF", "scSE", "DeformConv", "contract"):
        assert block in titles, (block, titles)
    stale = [str(p.relative_to(ROOT)) for p in _sources()
             if p != Path(__file__).resolve() and re.search(r"SPEC-blocks|\bSPEC section", p.read_text())]
    assert stale == []
