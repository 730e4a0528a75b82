"""The `nnunet-tubeconv` command.

Each sub-command lives in the module that owns its concept and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their sub-command is
chosen, so ``nnunet-tubeconv --help`` stays fast (torch and nnU-Net are slow to import).
To add a sub-command, add one line to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_tubeconv import __version__

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {}


def _register(name: str, module: str, help_text: str) -> None:
    COMMANDS[name] = (module, help_text)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-tubeconv",
        description="Tubular-structure blocks for stock nnU-Net v2 and an honest benchmark of them.",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-tubeconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_arguments(p)
    return parser


def _selected_command(argv: list[str]) -> str | None:
    for a in argv:
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _selected_command(argv)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
