"""The `nnunet-tubeconv` command.

Each sub-command lives in the module that owns its concept and exposes two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when their sub-command is
chosen, so ``nnunet-tubeconv --help`` stays fast (torch and nnU-Net are slow to import).
To add a sub-command, add one line to ``COMMANDS``.

Errors are handled here, once, for every sub-command: ``run`` raises, :func:`main` prints one line
``nnunet-tubeconv COMMAND: error: MESSAGE`` on stderr (no traceback; argparse's own usage errors look the same) and
returns the exit status: 2 for bad input (:data:`BAD_INPUT`: a wrong argument value, a missing or malformed file or
folder), 1 for a step that failed for another reason (:data:`FAILED_STEP`: a subprocess, a build, a missing optional
package), 130 when interrupted. A sub-command's ``run`` returns 0, or 1 for a negative finding (``doctor``, a
benchmark with failed units).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_tubeconv import __version__

PROG = "nnunet-tubeconv"
#: exceptions that mean bad input: exit status 2 (the package's input errors are ValueErrors: SuiteError,
#: ModelFolderError, EvaluationInputError, TrainerNotFoundError, ...)
BAD_INPUT: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError)
#: exceptions that mean a step failed for another reason: exit status 1
FAILED_STEP: tuple[type[BaseException], ...] = (RuntimeError, ImportError, OSError)

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {}


def _register(name: str, module: str, help_text: str) -> None:
    COMMANDS[name] = (module, help_text)


_register("synth", "nnunet_tubeconv.data.synthetic",
          "write a synthetic 2D/3D vessel-tree data set (nnU-Net raw)")
_register("convert", "nnunet_tubeconv.data.convert",
          "convert DRIVE, STARE, vesselNN, a folder of images or an MSD task to an nnU-Net raw data set")
_register("evaluate", "nnunet_tubeconv.evaluation.folders",
          "clDice, Betti, HD95, NSD, Dice: predictions vs references")
_register("postprocess", "nnunet_tubeconv.postprocessing.command",
          "remove small fragments per label, chosen on cross-validation (determine) and applied (apply)")
_register("report", "nnunet_tubeconv.evaluation.report",
          "write report.md and report.html for a benchmark RESULTS_DIR")
_register("bench-train", "nnunet_tubeconv.benchmarks.perf.bench_train",
          "one training iteration per variant vs vanilla nnU-Net")
_register("benchmark", "nnunet_tubeconv.benchmarks.runner",
          "train vanilla nnU-Net and variants on the same splits; records + report")
_register("demo", "nnunet_tubeconv.benchmarks.demo",
          "synthetic 2D tubes: vanilla vs snake on CPU at the smoke budget (make demo)")
_register("bench-blocks", "nnunet_tubeconv.benchmarks.perf.bench_blocks",
          "time and backward memory of every block vs a plain conv block")
_register("env", "nnunet_tubeconv.doctor",
          "print the `export nnUNet_extTrainer=...` line for this installation")
_register("doctor", "nnunet_tubeconv.doctor",
          "check nnU-Net version, paths, trainer discovery, device (and plans)")
_register("export-onnx", "nnunet_tubeconv.deploy.onnx_export",
          "export a trained model folder to ONNX (dynamic spatial axes, metadata)")
_register("package", "nnunet_tubeconv.deploy.package",
          "challenge bundle: nnU-Net model zip, pinned requirements, predict.py, Dockerfile")
_register("show-snakes", "nnunet_tubeconv.deploy.snakes",
          "draw a trained model's DSConv sample points over an image (PNG)")
_register("snake-stats", "nnunet_tubeconv.deploy.snake_stats",
          "do a model's DSConv snakes follow the vessels? saturation, tilt, adherence")
_register("plan", "nnunet_tubeconv.planning.plan",
          "memory-aware nnU-Net plans for a variant, host preset and GPU memory target")
_register("calibrate-memory", "nnunet_tubeconv.benchmarks.perf.calibrate_memory",
          "memory estimates vs measured bytes; planned patch/batch per variant")
_register("gpu-check", "nnunet_tubeconv.benchmarks.perf.gpu_check",
          "one GPU run: Triton kernels, bench-blocks, bench-train, calibrate-memory; md+json report vs targets")


class NestedCommands:
    """A command whose first argument picks a module that owns the rest (``convert drive``, ``postprocess
    determine``): ``table`` maps each name to ``(module, one-line help)``; error lines name the nested command."""

    def __init__(self, dest: str, metavar: str, table: dict[str, tuple]):
        self.dest, self.metavar, self.table = dest, metavar, table

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        sub = parser.add_subparsers(dest=self.dest, metavar=self.metavar, required=True)
        for name, (module, help_text) in self.table.items():
            p = sub.add_parser(name, help=help_text, description=help_text)
            p.set_defaults(error_prog=p.prog)  # e.g. "nnunet-tubeconv convert drive"
            module.add_arguments(p)

    def run(self, args: argparse.Namespace) -> int:
        return self.table[getattr(args, self.dest)][0].run(args)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tubular-structure blocks for stock nnU-Net v2 and an honest benchmark of them.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
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
    # the sub-command as typed, e.g. "nnunet-tubeconv convert drive" (nested sub-commands set error_prog)
    prog = getattr(args, "error_prog", None) or f"{PROG} {args.command}"
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BAD_INPUT as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except FAILED_STEP as e:
        print(f"{prog}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
