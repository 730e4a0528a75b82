"""Every Python package of the repository is in pyproject.toml's explicit package list (a package left out works in
the editable install of the tests but is missing from a wheel), under the import name its folder maps to."""

import sys
from pathlib import Path

from support import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    package_dir = config["package-dir"]  # import name -> folder (architectures/, trainers/, benchmarks/)
    found = set()
    for name, folder in package_dir.items():
        root = REPO_ROOT / folder
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            sub = [p for p in package_dir if p != name and p.startswith(name + ".")]
            dotted = ".".join([name, *rel.parts]) if rel.parts else name
            if not any(dotted == s or dotted.startswith(s + ".") for s in sub):
                found.add(dotted)
    assert sorted(found - listed) == [], "packages missing from pyproject.toml's [tool.setuptools] packages"
    assert sorted(listed - found) == [], "listed packages without a folder"
    assert all((REPO_ROOT / Path(f)).is_dir() for f in package_dir.values())
