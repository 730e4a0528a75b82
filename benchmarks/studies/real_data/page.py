"""``python -m nnunet_tubeconv.benchmarks.studies.real_data.page collect|render``: the results page on real data.

* ``collect RESULTS_DIR [...]``: copy each harness results folder's ``suite.json``, ``record.json`` files and
  ``annotators/*/*.json`` into the store ``benchmarks/studies/real_data/records/<suite name>/`` (changed files
  replace the stored ones; unchanged ones are left alone), and, while nnU-Net's folders are at hand, draw each data
  set's case image into ``docs/images/`` (``--raw``: nnU-Net's raw folder, for the image; default ``$nnUNet_raw``),
  and measure ``snake-stats`` of each finished unit with snakes into ``records/<suite name>/snake_stats/`` (once per
  version of its record; :mod:`.snakes`).
* ``render``: from the store only, write the generated part of ``docs/results.md`` between ``<!-- results:begin -->``
  and ``<!-- results:end -->`` (created where the page's "## Status" section was, below the protocol, the first
  time; nothing outside the markers is changed) and the per-case differences figures into ``docs/images/``. The
  suites of ``--suites`` (default: the three real-data suites) are listed even before any record of theirs exists.

Bad input (a folder that is not a harness results folder, a page without the protocol) is one error line and exit
status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nnunet_tubeconv.benchmarks.studies.real_data.case import write_case_figures
from nnunet_tubeconv.benchmarks.studies.real_data.sections import Settings, render_generated
from nnunet_tubeconv.benchmarks.studies.real_data.snakes import collect_snake_stats
from nnunet_tubeconv.benchmarks.studies.real_data.store import STORE, STUDY_DIR, collect, load_store, load_stored
from nnunet_tubeconv.evaluation import stats as st

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
REPO_ROOT = STUDY_DIR.parents[2]
PAGE = REPO_ROOT / "docs" / "results.md"
IMAGES = REPO_ROOT / "docs" / "images"
SUITES = tuple(REPO_ROOT / "benchmarks" / "suites" / f"real_{x}.toml" for x in ("drive", "stare", "vesselnn"))
PLACEHOLDER_SECTION = "## Status"


def splice(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced by ``generated``. Without markers, the "## Status"
    section (its heading to the next "## " heading or the end) becomes the markers and what they hold; without that
    section too, they are appended."""
    block = f"{BEGIN}\n{generated.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + block + tail
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == PLACEHOLDER_SECTION), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + block + "\n" + ("\n" + tail if tail else "")


def planned_suites(files) -> list[dict]:
    """The suites the page lists even without records (``benchmarks.suite.load_suite`` of each file)."""
    from nnunet_tubeconv.benchmarks.suite import load_suite

    return [load_suite(f).to_json() for f in files]


def render(store: Path = STORE, page: Path = PAGE, images: Path = IMAGES, suites=SUITES,
           settings: Settings | None = None) -> Path:
    page = Path(page)
    if not page.is_file():
        raise FileNotFoundError(f"{page} not found: render writes into an existing results page (its protocol first)")
    text = page.read_text(encoding="utf-8")
    if BEGIN in text and END not in text or END in text and BEGIN not in text:
        raise ValueError(f"{page} has one of the markers {BEGIN} / {END} but not the other")
    root = REPO_ROOT if REPO_ROOT in page.resolve().parents else None
    generated = render_generated(load_store(store), planned_suites(suites), Path(images), page.parent, root,
                                 settings or Settings())
    new = splice(text, generated)
    if new != text:
        page.write_text(new, encoding="utf-8")
    return page


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nnunet_tubeconv.benchmarks.studies.real_data.page",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("collect", help="copy harness results folders' records into the store; draw the case images")
    c.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="harness results folder (holds suite.json)")
    c.add_argument("--store", type=Path, default=STORE, help="the store (default: %(default)s)")
    c.add_argument("--images", type=Path, default=IMAGES, help="folder of the page's images (default: %(default)s)")
    c.add_argument("--raw", type=Path, default=os.environ.get("nnUNet_raw"),
                   help="nnU-Net's raw folder, for the case image's picture and snake-stats' images (default: "
                        "$nnUNet_raw)")
    r = sub.add_parser("render", help="write the generated part of the results page from the store")
    r.add_argument("--store", type=Path, default=STORE, help="the store (default: %(default)s)")
    r.add_argument("--page", type=Path, default=PAGE, help="the results page (default: %(default)s)")
    r.add_argument("--images", type=Path, default=IMAGES, help="folder of the page's images (default: %(default)s)")
    r.add_argument("--suites", type=Path, nargs="*", default=list(SUITES),
                   help="suite files listed on the page even before they have records (default: the real-data "
                        "suites)")
    r.add_argument("--n-resamples", type=int, default=st.N_RESAMPLES, help="bootstrap resamples (default: "
                   "%(default)s)")
    r.add_argument("--seed", type=int, default=0, help="bootstrap and permutation seed (default: %(default)s)")
    return p


def _collect(args) -> None:
    for d in args.results_dirs:
        summary = collect(d, args.store)
        print(f"{d} -> {summary.folder}: {summary.records} records; {summary.new} files new, {summary.replaced} "
              f"replaced, {summary.unchanged} unchanged")
        for line in write_case_figures(load_stored(summary.folder), args.images, args.raw):
            print(f"  {line}")
        for line in collect_snake_stats(d, summary.folder, args.raw):
            print(f"  {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from nnunet_tubeconv.cli import BAD_INPUT

    args = _parser().parse_args(argv)
    try:
        if args.action == "collect":
            _collect(args)
        else:
            if args.n_resamples < 1:
                raise ValueError(f"--n-resamples must be >= 1, got {args.n_resamples}")
            page = render(args.store, args.page, args.images, args.suites,
                          Settings(n_resamples=args.n_resamples, seed=args.seed))
            print(f"wrote {page}")
    except BAD_INPUT as e:
        print(f"{_parser().prog} {args.action}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
