"""The README and docs/ stay true: short README, links that resolve, every command and option documented, no
tracker numbers, every named file present, and the trainer snippets they show build real nnU-Net trainers."""

from __future__ import annotations

import argparse
import inspect
import re
import textwrap
from pathlib import Path

import pytest
from support import REPO_ROOT

ROOT = REPO_ROOT
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COMMANDS_DOC = DOCS / "reference" / "commands.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

_FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```[^\n]*$", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
#: "issue N", "issues N and M", "issue #N", "issue-N" (N a number); and GitHub's bare "#N" (not an anchor such as
#: "(#1-dsconv")
_ISSUE = re.compile(r"\bissues?[\s_-]*#?\d+|(?<![\w&/(#])#\d+(?![\w-])", re.IGNORECASE)
_REPO_DIRS = ("nnunet_tubeconv/", "architectures/", "trainers/", "benchmarks/", "tests/", "docs/")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (links and names in prose only)."""
    return _FENCE.sub("", path.read_text())


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_prose(path)):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_at_most_200_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for m in _LINK.finditer(_prose(page)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            if ROOT not in dest.parents and dest != ROOT:
                broken.append(f"{_rel(page)}: {target} leaves the repository")
            elif not dest.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no heading with that anchor in {_rel(dest)})")
    assert broken == []


def test_every_doc_page_is_reachable_from_the_index():
    index = DOCS / "README.md"
    linked = {(index.parent / m.group(1).partition("#")[0]).resolve() for m in _LINK.finditer(_prose(index))}
    pages = {p.resolve() for p in DOCS.rglob("*.md")} - {index.resolve()}
    assert sorted(_rel(p) for p in pages - linked) == []


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def test_every_command_and_option_is_in_the_commands_reference():
    from nnunet_tubeconv.cli import COMMANDS, build_parser

    text = COMMANDS_DOC.read_text()
    headings = {m.group(1).replace("`", "").strip() for m in _HEADING.finditer(_prose(COMMANDS_DOC))}
    missing = []
    for name in COMMANDS:
        if name not in headings:
            missing.append(f"heading for `{name}`")
        parser = _subparsers(build_parser(name))[name]
        todo = [(name, parser)]
        while todo:
            label, p = todo.pop()
            for action in p._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                if isinstance(action, argparse._SubParsersAction):
                    for sub, sp in action.choices.items():
                        if f"{label} {sub}" not in headings:
                            missing.append(f"heading for `{label} {sub}`")
                        todo.append((f"{label} {sub}", sp))
                    continue
                for option in action.option_strings:
                    if f"`{option}`" not in text:
                        missing.append(f"{label} {option}")
    assert missing == []


def test_no_issue_numbers_of_a_tracker():
    hits = [f"{_rel(p)}:{n}: {line.strip()}" for p in PAGES
            for n, line in enumerate(p.read_text().splitlines(), 1) if _ISSUE.search(line)]
    assert hits == [], "write the reason instead of the tracker's number"


def _names_a_missing_file(span: str, tests: set[str]) -> bool:
    """A test module named by its file name, or a path from the repository root, that is not there."""
    if re.fullmatch(r"test_\w+\.py", span):
        return span not in tests
    if span.startswith(_REPO_DIRS) and not re.search(r"[<>*{}$ ]|\.\.\.", span):  # not a placeholder
        return not (ROOT / span).exists()
    return False


def test_every_named_file_exists():
    tests = {p.name for p in (ROOT / "tests").rglob("test_*.py")}
    missing = [f"{_rel(page)}: {m.group(1)}" for page in PAGES for m in _CODE_SPAN.finditer(_prose(page))
               if _names_a_missing_file(m.group(1).strip(), tests)]
    assert missing == []


def _python_blocks(path: Path) -> list[str]:
    blocks = re.findall(r"^[ \t]*```python\n(.*?)^[ \t]*```", path.read_text(), re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(b) for b in blocks]


@pytest.mark.parametrize("page", ["how-to/use-with-nnunet.md", "how-to/topology-losses.md",
                                  "reference/block-options.md"])
def test_the_trainer_snippets_build_nnunet_trainers(page):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_tubeconv.architectures.options import check_option_names

    blocks = _python_blocks(DOCS / page)
    assert blocks, f"docs/{page} shows no trainer snippet"
    for source in blocks:
        namespace: dict = {"__name__": "docs_snippet"}
        exec(compile(source, f"docs/{page}", "exec"), namespace)  # noqa: S102 - our own documentation's snippet
        classes = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, nnUNetTrainer)
                   and v.__module__ == "docs_snippet"]
        assert classes, f"no trainer class defined in a snippet of docs/{page}"
        stock = list(inspect.signature(nnUNetTrainer.__init__).parameters)
        for cls in classes:
            assert list(inspect.signature(cls.__init__).parameters) == stock, cls
            check_option_names(getattr(cls, "block_options", None))
