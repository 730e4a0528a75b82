"""``nnunet-tubeconv env`` and ``nnunet-tubeconv doctor``: set up and check stock nnU-Net for our trainers.

``env`` prints the one line that makes stock nnU-Net find the trainers (nnU-Net's ``nnUNet_extTrainer``, the
directory of :mod:`nnunet_tubeconv.trainers` wherever the package is installed)::

    eval "$(nnunet-tubeconv env)"

``doctor`` checks what nnU-Net needs and says how to fix what is wrong (exit code 1 if anything is):

* nnunetv2 version (this package is written against ``>=2.8,<2.9``);
* ``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` (set, existing directories);
* ``nnUNet_extTrainer`` (set, existing folders, includes ours) and that nnU-Net's own lookup
  (``recursive_find_trainer_class_by_name``, what ``nnUNetv2_train -tr`` uses) finds each trainer;
* the torch device (a warning only: without a GPU, pass ``-device cpu``);
* with ``-d DATASET``: that each trainer builds its network from that data set's plans (on the meta device: no
  memory, no compute), e.g. refusing a plans file whose network is neither a PlainConvUNet nor a
  ResidualEncoderUNet (default and ResEnc plans) with a readable message.

Both commands keep imports light until ``run`` (torch and nnU-Net load there).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from nnunet_tubeconv.trainers import TRAINER_MODULES, trainer_folder

NNUNET_REQUIRED = ((2, 8), (2, 9))  # >=2.8,<2.9, as in pyproject.toml
PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXT_TRAINER = "nnUNet_extTrainer"
SHELLS = ("sh", "fish", "powershell", "cmd")

_PATH_HELP = {
    "nnUNet_raw": "raw data sets (DatasetXXX_Name/imagesTr, labelsTr, dataset.json)",
    "nnUNet_preprocessed": "plans and preprocessed data written by nnUNetv2_plan_and_preprocess",
    "nnUNet_results": "trained models written by nnUNetv2_train",
}


# ---------------------------------------------------------------------------------------------------------------
# env


def ext_trainer_value(existing: str | None = None) -> str:
    """``nnUNet_extTrainer`` value with our folder first, keeping other folders of ``existing`` (deduplicated)."""
    ours = str(trainer_folder())
    parts = [ours]
    for p in (existing or "").split(os.pathsep):
        p = p.strip()
        if p and not _same_path(p, ours) and p not in parts:
            parts.append(p)
    return os.pathsep.join(parts)


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return a == b


def export_line(value: str, shell: str = "sh") -> str:
    """The shell statement that sets ``nnUNet_extTrainer`` to ``value``."""
    if shell == "sh":
        return f"export {EXT_TRAINER}={shlex.quote(value)}"
    if shell == "fish":
        return f"set -gx {EXT_TRAINER} {shlex.quote(value)}"
    if shell == "powershell":
        return f"$env:{EXT_TRAINER} = '{value.replace(chr(39), chr(39) * 2)}'"
    if shell == "cmd":
        return f'set "{EXT_TRAINER}={value}"'
    raise ValueError(f"unknown shell {shell!r}; choose one of {list(SHELLS)}")


# ---------------------------------------------------------------------------------------------------------------
# doctor


@dataclass
class Check:
    """One finding. ``status``: ``"ok"``, ``"warn"`` (works, but read this) or ``"fail"`` (will not work)."""

    status: str
    what: str
    fix: str = ""


def _parse_version(text: str) -> tuple[int, ...]:
    """Leading numeric release components: "2.8.1" -> (2, 8, 1), "2.8.0rc1" -> (2, 8, 0)."""
    nums = []
    for part in text.split(".")[:3]:
        m = re.match(r"\d+", part)
        if m is None:
            break
        nums.append(int(m.group()))
        if m.end() != len(part):  # "0rc1", "1+local": nothing numeric follows a pre-release or local tag
            break
    return tuple(nums)


def check_nnunet_version(version: str | None = None) -> Check:
    """nnunetv2's installed version against :data:`NNUNET_REQUIRED`."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    lo, hi = NNUNET_REQUIRED
    want = f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"
    if version is None:
        try:
            version = dist_version("nnunetv2")
        except PackageNotFoundError:
            return Check("fail", "nnunetv2 is not installed", f"pip install 'nnunetv2{want}'")
    v = _parse_version(version)[:2]
    if not lo <= v < hi:
        return Check(
            "fail", f"nnunetv2 {version} installed, nnunet-tubeconv needs {want}", f"pip install 'nnunetv2{want}'"
        )
    return Check("ok", f"nnunetv2 {version} ({want})")


def check_path_variables(environ: dict[str, str] | None = None) -> list[Check]:
    """nnU-Net's three folder variables: set, and existing directories."""
    env = os.environ if environ is None else environ
    out = []
    for var in PATH_VARIABLES:
        value = env.get(var)
        if not value:
            out.append(
                Check(
                    "fail",
                    f"{var} is not set ({_PATH_HELP[var]})",
                    f"export {var}=/path/to/{var}  (see nnU-Net's documentation/setting_up_paths.md)",
                )
            )
        elif not Path(value).is_dir():
            what = "is not a directory" if Path(value).exists() else "does not exist"
            out.append(Check("fail", f"{var}={value} {what}", f"mkdir -p {shlex.quote(value)}"))
        else:
            out.append(Check("ok", f"{var}={value}"))
    return out


def check_ext_trainer(environ: dict[str, str] | None = None) -> list[Check]:
    """``nnUNet_extTrainer``: set, every entry an existing folder, our folder among them."""
    env = os.environ if environ is None else environ
    ours = str(trainer_folder())
    fix = f'{export_line(ext_trainer_value(env.get(EXT_TRAINER)))}   (or: eval "$(nnunet-tubeconv env)")'
    value = env.get(EXT_TRAINER)
    if not value:
        return [Check("fail", f"{EXT_TRAINER} is not set: nnU-Net cannot find the nnunet-tubeconv trainers", fix)]
    out = []
    entries = [p for p in value.split(os.pathsep) if p.strip()]
    for p in entries:
        if not Path(p).is_dir():
            out.append(Check("fail", f"{EXT_TRAINER} names {p}, which is not a directory (nnU-Net skips it)", fix))
    if not any(_same_path(p, ours) for p in entries):
        out.append(Check("fail", f"{EXT_TRAINER}={value} does not include the trainer folder {ours}", fix))
    if not out:
        out.append(Check("ok", f"{EXT_TRAINER}={value}"))
    return out


def check_trainer_discovery(names: list[str]) -> list[Check]:
    """Find each trainer exactly as ``nnUNetv2_train -tr NAME`` does; report where it came from."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    ours = trainer_folder()
    out = []
    for name in names:
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):  # the lookup narrates every module it inspects
                recursive_find_trainer_class_by_name(name)
        except RuntimeError as e:
            if "Could not find requested nnunet trainer" in str(e):
                out.append(
                    Check(
                        "fail",
                        f"nnU-Net cannot find trainer {name!r} (not in nnunetv2, nor in any {EXT_TRAINER} folder)",
                        f"check the spelling (ours: {', '.join(_our_trainer_names())}) and that the folder "
                        f"defining it is in {EXT_TRAINER}",
                    )
                )
            else:
                out.append(Check("fail", f"looking up trainer {name!r} failed: {type(e).__name__}: {e}"))
            continue
        except AssertionError:
            out.append(Check("fail", f"{name!r} was found but is not a subclass of nnunetv2's nnUNetTrainer"))
            continue
        except Exception as e:  # noqa: BLE001  (a broken module in an ext folder breaks every lookup: report it)
            out.append(
                Check(
                    "fail",
                    f"looking up trainer {name!r} failed while importing the {EXT_TRAINER} folders: "
                    f"{type(e).__name__}: {e}",
                    "every module in those folders is imported by nnU-Net: fix or remove the module named above",
                )
            )
            continue
        where = _found_in(buf.getvalue())
        if name in _our_trainer_names() and (where is None or not _same_path(where, str(ours))):
            out.append(
                Check(
                    "warn",
                    f"trainer {name} resolves to {where or 'nnunetv2 itself'}, not to this installation's {ours}",
                    f"remove the stale copy or put {ours} first in {EXT_TRAINER}",
                )
            )
        else:
            out.append(Check("ok", f"trainer {name} found in {where or 'nnunetv2'}"))
    return out


def _found_in(lookup_output: str) -> str | None:
    # The lookup names the folder it took the class from ("Using trainer 'X' from: PATH"); the class itself cannot
    # tell, because the lookup drops the modules it imported from sys.modules again.
    for line in lookup_output.splitlines():
        if line.startswith("Using trainer") and " from: " in line:
            return line.split(" from: ", 1)[1].strip()
    return None


def _our_trainer_names() -> list[str]:
    return sorted(TRAINER_MODULES)


def check_device() -> Check:
    """Which torch device nnU-Net can use; CPU-only is a warning (training works with ``-device cpu``, slowly)."""
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("ok", f"torch {torch.__version__}, CUDA device(s): {names}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("ok", f"torch {torch.__version__}, Apple MPS (pass -device mps to nnUNetv2_train / predict)")
    return Check(
        "warn",
        f"torch {torch.__version__} sees no GPU: nnUNetv2_train and nnUNetv2_predict default to -device cuda",
        "pass -device cpu (slow; fine for tests), or install a CUDA build of torch on a GPU machine",
    )


def check_snake_kernels() -> Check:
    """Whether DSConv runs its compiled CPU kernels (a few times faster on CPU) or the PyTorch fallback."""
    from nnunet_tubeconv.blocks.dsconv import cpu_backend

    line = cpu_backend.status()
    if line.startswith("native: "):
        return Check("ok", f"DSConv CPU kernels: {line[len('native: '):]}")
    return Check(
        "warn",
        f"DSConv runs its PyTorch implementation on CPU ({line[len('PyTorch fallback: '):]}); GPUs are unaffected",
        "install a C compiler (gcc or clang) for faster CPU training and inference, or ignore on GPU machines",
    )


def check_triton_kernels(cuda_available: bool | None = None) -> Check:
    """Whether DSConv runs its Triton kernels on CUDA tensors (or its slower PyTorch path there)."""
    from nnunet_tubeconv.blocks.dsconv import triton_backend

    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    line = triton_backend.status()
    if triton_backend.available():
        return Check("ok", f"DSConv: {line}")
    if not cuda_available:
        return Check("ok", f"DSConv on CUDA would run its PyTorch path ({line}); this machine has no GPU")
    return Check("warn", f"DSConv runs its slower PyTorch path on this GPU: {line}",
                 "install triton (CUDA builds of torch bring it along), or unset NNUNET_TUBECONV_TRITON=0")


def check_plans(
    dataset: str, plans_identifier: str, configurations: list[str] | None, trainers: list[str]
) -> list[Check]:
    """Build each trainer's network for each configuration of a preprocessed data set's plans (meta device)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = os.environ.get("nnUNet_preprocessed")
    if not pre:
        return [Check("fail", f"cannot check the plans of {dataset}: nnUNet_preprocessed is not set")]
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        return [Check("fail", f"data set {dataset!r}: {first}", f"nnUNetv2_plan_and_preprocess -d {dataset}")]
    plans_file = Path(pre) / name / f"{plans_identifier}.json"
    dataset_file = Path(pre) / name / "dataset.json"
    if not plans_file.is_file() or not dataset_file.is_file():
        return [
            Check(
                "fail",
                f"{plans_file if not plans_file.is_file() else dataset_file} does not exist",
                f"nnUNetv2_plan_and_preprocess -d {dataset}  (or pass the right -p)",
            )
        ]
    plans, dataset_json = load_json(str(plans_file)), load_json(str(dataset_file))
    pm = PlansManager(plans)
    available = pm.available_configurations
    configurations = configurations or available
    out = []
    for c in configurations:
        if c not in available:
            out.append(Check("fail", f"{plans_file.name} has no configuration {c!r}; it has {available}"))
            continue
        cm = pm.get_configuration(c)
        n_in = determine_num_input_channels(pm, cm, dataset_json)
        n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
        for t in trainers:
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    cls = recursive_find_trainer_class_by_name(t)
            except Exception:  # noqa: BLE001, S112  (already reported by the discovery check)
                continue
            try:
                with torch.device("meta"):  # shapes only: real-sized 3D networks in milliseconds, no memory
                    net = cls.build_network_architecture(pm, cm, n_in, n_out, True)
            except ValueError as e:
                out.append(Check("fail", f"{t} on {name} {plans_identifier} {c}: {e}"))
                continue
            except Exception as e:  # noqa: BLE001  (report any failure as a finding, not a traceback)
                out.append(
                    Check(
                        "fail",
                        f"{t} on {name} {plans_identifier} {c}: building the network raised {type(e).__name__}: {e}",
                    )
                )
                continue
            n_params = sum(p.numel() for p in net.parameters())
            loss_problem = getattr(cls, "loss_problem", None)  # the loss trainers: does the loss apply to the labels?
            problem = loss_problem(pm.get_label_manager(dataset_json)) if loss_problem else None
            if problem:
                out.append(Check("fail", f"{t} on {name} {plans_identifier} {c}: {problem}"))
                continue
            out.append(
                Check(
                    "ok",
                    f"{t} builds {type(net).__name__} for {name} {plans_identifier} {c}: {n_in} input channel(s), "
                    f"{n_out} output(s), {n_params / 1e6:.2f} M parameters, patch {list(cm.patch_size)}",
                )
            )
    return out


_MARK = {"ok": "[ OK ]", "warn": "[WARN]", "fail": "[FAIL]"}


def report(checks: list[Check]) -> int:
    """Print the checks; return 1 if any failed, else 0."""
    for c in checks:
        print(f"{_MARK[c.status]} {c.what}")
        if c.fix and c.status != "ok":
            print(f"       fix: {c.fix}")
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    if failed:
        print(f"\n{failed} problem(s), {warned} warning(s): nnU-Net will not run our trainers until fixed.")
    else:
        print(f"\nAll good ({warned} warning(s)).")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------------------------
# CLI: one module serves two sub-commands; the sub-parser's prog ("nnunet-tubeconv env") tells which.


def _command_of(parser: argparse.ArgumentParser) -> str:
    return parser.prog.split()[-1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if _command_of(parser) == "env":
        parser.description = (
            f"Print the shell line that sets {EXT_TRAINER} to this installation's trainer folder (keeping other "
            f'folders already in it). Use: eval "$(nnunet-tubeconv env)", or append the line to ~/.bashrc.'
        )
        parser.add_argument("--shell", choices=SHELLS, default="sh", help="syntax of the line (default: sh/bash/zsh)")
        parser.add_argument("--path", action="store_true", help="print only the trainer folder")
        parser.add_argument(
            "--replace", action="store_true", help=f"ignore folders already in {EXT_TRAINER} (print ours alone)"
        )
        return
    parser.description = (
        "Check nnunetv2's version, nnU-Net's path variables, nnUNet_extTrainer and trainer discovery, and the torch "
        "device; with -d, also that the trainers build networks from that data set's plans. Exit code 1 if "
        "anything is wrong."
    )
    parser.add_argument(
        "-tr",
        "--trainer",
        nargs="+",
        default=None,
        help="trainer class names to look up (default: every nnunet-tubeconv trainer); a subclass of your own works",
    )
    parser.add_argument("-d", "--dataset", default=None, help="data set name or id whose plans to check")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-c", "--configuration", nargs="+", default=None, help="configurations (default: all)")


def run(args: argparse.Namespace) -> int:
    if hasattr(args, "shell"):  # the env sub-command
        if args.path:
            print(trainer_folder())
            return 0
        existing = None if args.replace else os.environ.get(EXT_TRAINER)
        print(export_line(ext_trainer_value(existing), args.shell))
        return 0
    return run_doctor(args.trainer, args.dataset, args.plans, args.configuration)


def run_doctor(
    trainers: list[str] | None = None,
    dataset: str | None = None,
    plans: str = "nnUNetPlans",
    configurations: list[str] | None = None,
) -> int:
    """All checks, printed; returns the exit code."""
    checks = [check_nnunet_version()]
    checks += check_path_variables()
    ext = check_ext_trainer()
    checks += ext
    names = trainers or _our_trainer_names()
    if os.environ.get(EXT_TRAINER) or trainers:
        checks += check_trainer_discovery(names)
    checks.append(check_device())
    checks.append(check_snake_kernels())
    checks.append(check_triton_kernels())
    if dataset is not None:
        checks += check_plans(str(dataset), plans, configurations, names)
    return report(checks)
