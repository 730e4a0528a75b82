"""Running units of work: one arm x fold x seed trained by ``nnUNetv2_train``, validated, evaluated, recorded.

:func:`run_unit` does one unit from start to record and is the same code everywhere; the executors only decide
where it runs:

* ``local`` (:class:`LocalExecutor`): units one after the other on this machine (one GPU or the CPU), streaming
  nnU-Net's epoch lines.
* ``slurm`` (:class:`SubmititExecutor`): one SLURM job per unit through ``submitit.AutoExecutor``; each job runs
  :func:`run_unit` on its node and writes the same ``record.json``. Jobs are checkpointable
  (:mod:`nnunet_tubeconv.benchmarks.slurm_job`): a job stopped by the time limit or a preemption is requeued and
  continues the unit from its nnU-Net checkpoint. ``submitit-local`` and ``submitit-debug`` use
  submitit's ``LocalExecutor`` (jobs as local processes) and ``DebugExecutor`` (in-process): the cluster code path
  without a cluster.

Moving from one machine to a SLURM cluster: keep the suite, keep ``RESULTS_DIR`` on a file system the nodes share
(as ``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results``), and add e.g.
``--executor slurm --slurm-partition gpu --slurm-gpus-per-node 1 --slurm-time 24:00:00`` (or an ``[executor]``
table in the suite). Planning, preprocessing and splits still run once, on the submitting machine, before any job
is submitted. A unit already done locally is not redone on the cluster and vice versa. If the runner is stopped
while SLURM jobs run, restarting it re-attaches to those jobs (their ids are kept in ``submitit_job.json`` next to
the unit's record) instead of submitting them twice.

Robustness: ``nnUNetv2_train`` runs as a child process (a crash, an out-of-memory kill or a bad trainer fails that
unit only); on Linux it is tied to the runner with ``PR_SET_PDEATHSIG`` so that killing the runner kills the
training too. A unit whose nnU-Net fold folder holds a checkpoint continues from it (``--c``); a checkpoint that
cannot be loaded (torn by a kill during ``torch.save``) is moved aside first. A unit whose training and validation
already finished (``checkpoint_final.pth`` and ``validation/summary.json``) is only evaluated.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nnunet_tubeconv.benchmarks.arms import SEED_NOTE
from nnunet_tubeconv.benchmarks.records import (
    RECORD_FILE,
    RECORD_SCHEMA,
    curves_from_logging,
    median,
    read_record,
    utc_now,
)
from nnunet_tubeconv.benchmarks.suite import Unit
from nnunet_tubeconv.benchmarks.telemetry import TELEMETRY_FILE
from nnunet_tubeconv.evaluation.serialise import json_safe, write_json_atomic

ERROR_TAIL_CHARS = 4000


@dataclass
class UnitContext:
    """Everything a unit needs, picklable (submitit sends it to a SLURM node)."""

    unit: Unit
    results_dir: str
    trainer: str
    generated_trainer: str
    plans: str
    budget: dict[str, Any]
    device: str
    npz: bool
    env: dict[str, str]  # nnUNet_* folders, nnUNet_extTrainer, the suite's [env]
    evaluation: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    index: int = 1
    total: int = 1
    stream: bool = True

    @property
    def unit_dir(self) -> Path:
        return Path(self.results_dir) / self.unit.rel_dir

    @property
    def nnunet_fold_dir(self) -> Path:
        u = self.unit
        return (
            Path(self.env["nnUNet_results"]) / u.dataset / f"{self.generated_trainer}__{self.plans}__{u.configuration}"
            / f"fold_{u.fold}"
        )

    def prefix(self) -> str:
        u = self.unit
        return f"[{self.index}/{self.total} {u.arm} f{u.fold} s{u.seed}]"


# ------------------------------------------------------------------------------------------------ subprocess
def nnunet_command(name: str) -> list[str]:
    """An nnU-Net console script of this environment (next to the interpreter, else on PATH)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return [str(here)]
    found = shutil.which(name)
    if found:
        return [found]
    modules = {
        "nnUNetv2_train": "nnunetv2.run.run_training",
        "nnUNetv2_plan_experiment": "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
    }
    if name in modules:  # pragma: no cover - console scripts missing
        return [sys.executable, "-m", modules[name]]
    raise FileNotFoundError(f"nnU-Net console script {name} not found next to {sys.executable} or on PATH")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the child gets SIGKILL when the runner dies, so a killed runner leaves no training behind.
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() == 1:  # the runner died before prctl took effect
        os._exit(1)


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?: ")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class EpochPrinter:
    """Turns nnU-Net's stdout into one progress line per epoch (and per validation case)."""

    def __init__(self, prefix: str, num_epochs: int, enabled: bool = True):
        self.prefix, self.num_epochs, self.enabled = prefix, num_epochs, enabled
        self.epoch: int | None = None
        self.values: dict[str, str] = {}
        self.val_cases = 0

    def emit(self, text: str, always: bool = False) -> None:
        """Print one progress line; ``always`` lines (start, resume, done, failed) show even when quiet."""
        if self.enabled or always:
            print(f"{self.prefix} {text}", flush=True)

    def feed(self, raw: str) -> None:
        line = _TIMESTAMP.sub("", raw.rstrip("\n")).strip()
        if not line:
            return
        if m := re.fullmatch(r"Epoch (\d+)", line):
            self.epoch, self.values = int(m.group(1)), {}
        elif line.startswith("train_loss "):
            self.values["train_loss"] = line.split()[-1]
        elif line.startswith("val_loss "):
            self.values["val_loss"] = line.split()[-1]
        elif line.startswith("Pseudo dice"):
            nums = [n for n in _NUMBER.findall(line.replace("float32", "").replace("float64", ""))]
            self.values["pseudo_dice"] = "/".join(nums)
        elif m := re.fullmatch(r"Epoch time: ([\d.]+) s", line):
            ep = "?" if self.epoch is None else self.epoch + 1
            v = self.values
            self.emit(
                f"train | epoch {ep}/{self.num_epochs} | train_loss {v.get('train_loss', '?')} "
                f"val_loss {v.get('val_loss', '?')} pseudo-dice {v.get('pseudo_dice', '?')} | {m.group(1)} s"
            )
        elif m := re.fullmatch(r"predicting (\S+)", line):
            self.val_cases += 1
            self.emit(f"validate | case {m.group(1)} ({self.val_cases})")
        elif line.startswith("Mean Validation Dice"):
            self.emit(f"validate | nnU-Net's {line}")
        elif line.startswith("WARNING: Cannot continue training"):
            self.emit(line)


def run_streaming(cmd: list[str], env: dict[str, str], stdout_log: Path, stderr_log: Path,
                  printer: EpochPrinter) -> tuple[int, float, int | None]:
    """Run ``cmd``; stream its stdout through ``printer``; return (exit code, wall seconds, max RSS bytes).

    Max RSS comes from ``os.wait4`` on the child: the ``ru_maxrss`` of the largest single process in the child's
    tree (the child or a descendant it waited for), not the sum of all processes; None where unavailable.
    """
    t0 = time.perf_counter()
    with open(stdout_log, "a", encoding="utf-8") as out, open(stderr_log, "a", encoding="utf-8") as err:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        kwargs: dict[str, Any] = {}
        if sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = _die_with_parent
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1,
            **kwargs,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                printer.feed(line)
            maxrss = None
            if hasattr(os, "wait4"):
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                # Linux reports KiB, macOS bytes
                maxrss = int(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)
            else:  # pragma: no cover
                proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return int(proc.returncode), time.perf_counter() - t0, maxrss


def _tail(path: Path, chars: int = ERROR_TAIL_CHARS) -> str:
    try:
        data = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return data[-chars:]


# ------------------------------------------------------------------------------------------------ helpers
def _checkpoints(fold_dir: Path) -> list[Path]:
    return [fold_dir / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
            if (fold_dir / n).is_file()]


def _quarantine_torn_checkpoints(fold_dir: Path, printer: EpochPrinter) -> None:
    """Move aside checkpoints that torch cannot load (a kill during ``torch.save``), so ``--c`` takes the next."""
    import torch

    for p in _checkpoints(fold_dir):
        try:
            torch.load(p, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:  # torn zip / pickle
            bad = p.with_name(p.name + f".unreadable-{int(time.time())}")
            os.replace(p, bad)
            printer.emit(f"resume | {p.name} cannot be loaded ({type(e).__name__}); moved to {bad.name}", always=True)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: str, telemetry: dict[str, Any] | None) -> str:
    t = telemetry or {}
    if device == "cuda":
        return f"{t.get('device', 'cuda')} ({t.get('device_name') or 'unknown GPU'})"
    threads = t.get("torch_threads")
    return (f"{device} ({_cpu_name()}, {os.cpu_count()} logical cores"
            + (f", {threads} torch threads)" if threads else ")"))


def _load_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def validation_keys(preprocessed_dataset: Path, fold: int) -> list[str]:
    splits = _load_json(preprocessed_dataset / "splits_final.json")
    if not isinstance(splits, list) or fold >= len(splits):
        raise RuntimeError(f"fold {fold} is not in {preprocessed_dataset / 'splits_final.json'}")
    return list(splits[fold]["val"])


@contextmanager
def _reference_folder(env: dict[str, str], dataset: str, keys: list[str]) -> Iterator[tuple[Path, Path | None, str]]:
    """A temporary folder holding exactly ``keys`` of nnU-Net's reference copy (``gt_segmentations``, linked), and
    one with their field-of-view masks where the raw data set has ``masksTr``: ``(refs, masks or None, ending)``.
    A missing reference is an error, not a smaller sample."""
    pre = Path(env["nnUNet_preprocessed"]) / dataset
    gt = pre / "gt_segmentations"
    ending = (_load_json(pre / "dataset.json") or {}).get("file_ending", ".nii.gz")
    # field-of-view masks (convert drive writes raw masksTr): every metric is restricted to them
    masks = Path(env["nnUNet_raw"]) / dataset / "masksTr" if env.get("nnUNet_raw") else None
    masks = masks if masks is not None and masks.is_dir() else None
    with tempfile.TemporaryDirectory(prefix="tubeconv_ref_") as tmp:
        for k in keys:
            src = gt / f"{k}{ending}"
            if not src.is_file():
                raise RuntimeError(f"reference {src} is missing (nnU-Net's gt_segmentations copy)")
            try:
                os.symlink(src, Path(tmp) / src.name)
            except OSError:  # pragma: no cover - file systems without symlinks
                shutil.copyfile(src, Path(tmp) / src.name)
        mask_tmp = None
        if masks is not None:
            mask_tmp = Path(tmp) / "masks"
            mask_tmp.mkdir()
            for k in keys:
                src = masks / f"{k}{ending}"
                if src.is_file():
                    shutil.copyfile(src, mask_tmp / src.name)
        yield Path(tmp), mask_tmp, ending


def evaluate_against_references(pred_dir: Path, env: dict[str, str], dataset: str, keys: list[str],
                                evaluation: dict[str, Any]) -> dict[str, Any]:
    """evaluate_folders of ``pred_dir`` against nnU-Net's references of ``keys`` (restricted to the field of view
    where the data set has one), with the data set's labels and the suite's evaluation settings."""
    from nnunet_tubeconv.evaluation import evaluate_folders
    from nnunet_tubeconv.evaluation.folders import labels_from_dataset_json

    dataset_json = _load_json(Path(env["nnUNet_preprocessed"]) / dataset / "dataset.json") or {}
    # labels (regions where the data set defines them) and their names from dataset.json: one test family each
    labels, names = labels_from_dataset_json(dataset_json) if dataset_json.get("labels") else (None, None)
    with _reference_folder(env, dataset, keys) as (refs, masks, ending):
        results = evaluate_folders(pred_dir, refs, labels=labels, num_processes=1, progress=False,
                                   file_ending=ending, mask_dir=masks, label_names=names, **evaluation)
        if masks is not None:
            results["mask_dir"] = str(Path(env["nnUNet_raw"]) / dataset / "masksTr")
    results["ref_dir"] = str(Path(env["nnUNet_preprocessed"]) / dataset / "gt_segmentations")
    return results


def evaluate_validation(ctx: UnitContext) -> dict[str, Any]:
    """The unit's validation predictions (nnU-Net's ``fold_X/validation``) against the fold's validation cases of
    ``splits_final.json``."""
    u = ctx.unit
    keys = validation_keys(Path(ctx.env["nnUNet_preprocessed"]) / u.dataset, u.fold)
    return evaluate_against_references(ctx.nnunet_fold_dir / "validation", ctx.env, u.dataset, keys, ctx.evaluation)


def reevaluate_unit(ctx: UnitContext, record: dict[str, Any]) -> dict[str, Any]:
    """Score a finished unit's kept validation predictions again (current metrics, the suite's evaluation settings)
    and rewrite its record atomically with the new metrics; training facts (curves, times, memory) are kept and
    ``reevaluated`` says when and with which code. ``RuntimeError`` when the predictions are gone."""
    pred = ctx.nnunet_fold_dir / "validation"
    if not pred.is_dir():
        raise RuntimeError(f"cannot re-evaluate {ctx.unit.label()}: its validation predictions {pred} are gone")
    metrics = evaluate_validation(ctx)
    new = {**record, "metrics": metrics,
           "validation_cases": sorted({r["case"] for r in metrics.get("per_case", [])}),
           "reevaluated": {"at": utc_now(), "git_commit": ctx.git_commit, "versions": ctx.versions}}
    write_json_atomic(ctx.unit_dir / RECORD_FILE, json_safe(new))
    return new


BUDGET_STAMP = "harness_budget.json"
_SCHEDULE_KEYS = ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch")


def _claim_fold_dir(fold_dir: Path, budget: dict[str, Any]) -> None:
    """Stamp nnU-Net's fold folder with the budget; refuse a folder trained on another schedule of the same name.

    The generated trainer's name carries the budget's name, not its numbers: without the stamp, a folder left by a
    differently defined budget of the same name would be continued or reused silently.
    """
    want = {k: int(budget[k]) for k in _SCHEDULE_KEYS}
    have = _load_json(fold_dir / BUDGET_STAMP)
    if have is not None and {k: have.get(k) for k in _SCHEDULE_KEYS} != want:
        raise RuntimeError(
            f"{fold_dir} holds a training with budget {have} but this unit's budget {budget['name']!r} is {want}; "
            "delete that folder or point nnUNet_results elsewhere"
        )
    if have is None:
        write_json_atomic(fold_dir / BUDGET_STAMP, {"name": budget["name"], **want})


# ------------------------------------------------------------------------------------------------ one unit
def _base_record(ctx: UnitContext, started: str) -> dict[str, Any]:
    u = ctx.unit
    return {
        "schema": RECORD_SCHEMA,
        "status": "failed",
        "dataset": u.dataset,
        "configuration": u.configuration,
        "arm": u.arm,
        "trainer": ctx.trainer,
        "plans": ctx.plans,
        "fold": u.fold,
        "seed": u.seed,
        "budget": ctx.budget["name"],
        "git_commit": ctx.git_commit,
        "versions": ctx.versions,
        "device": ctx.device,
        "wall_time_s": None,
        "iteration_time_s": None,
        "peak_memory_bytes": None,
        "parameters": None,
        "block_options": None,
        "curves": None,
        "metrics": None,
        "error": None,
        "started": started,
        "finished": None,
        "generated_trainer": ctx.generated_trainer,
        "budget_settings": ctx.budget,
        "deterministic": False,
        "seed_note": SEED_NOTE,
        "nnunet_output_folder": str(ctx.nnunet_fold_dir),
    }


def _train(ctx: UnitContext, device: str, env: dict[str, str], printer: EpochPrinter) -> tuple[bool, int, Any, Any]:
    """``nnUNetv2_train`` of the unit (continued with ``--c`` from its checkpoints, skipped when an earlier run
    finished it); returns (resumed, exit code, wall time, max RSS): (False, 0, None, None) when skipped."""
    fold_dir = ctx.nnunet_fold_dir
    _claim_fold_dir(fold_dir, ctx.budget)
    finished_before = (fold_dir / "checkpoint_final.pth").is_file() and (
        fold_dir / "validation" / "summary.json"
    ).is_file()
    if finished_before:
        printer.emit("train | finished in an earlier run (checkpoint_final + validation found): evaluating only",
                     always=True)
        return False, 0, None, None
    if _checkpoints(fold_dir):
        _quarantine_torn_checkpoints(fold_dir, printer)
    resumed = bool(_checkpoints(fold_dir))
    u = ctx.unit
    cmd = nnunet_command("nnUNetv2_train") + [
        u.dataset, u.configuration, str(u.fold), "-tr", ctx.generated_trainer, "-p", ctx.plans,
        "-device", device,
    ]
    if resumed:
        cmd.append("--c")
    if ctx.npz:
        cmd.append("--npz")
    printer.emit(("resume | continuing from an nnU-Net checkpoint (--c)" if resumed else "train | start")
                 + f": {' '.join(cmd[-len(cmd) + 1:])}", always=True)
    rc, wall, maxrss = run_streaming(
        cmd, env, ctx.unit_dir / "nnunet_stdout.log", ctx.unit_dir / "nnunet_stderr.log", printer
    )
    return resumed, rc, wall, maxrss


def _final_checkpoint_facts(fold_dir: Path) -> tuple[dict[str, list] | None, dict[str, Any], int | None]:
    """The training curves of the final checkpoint, the arm trainer's telemetry and the parameter count."""
    final = fold_dir / "checkpoint_final.pth"
    if not final.is_file():
        raise RuntimeError(f"nnUNetv2_train exited normally but wrote no {final}")
    import torch

    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    curves = curves_from_logging(ckpt.get("logging"))
    telemetry = _load_json(fold_dir / TELEMETRY_FILE) or {}
    parameters = telemetry.get("parameters")
    if parameters is None:
        # state dicts repeat shared modules (PlainConvUNet's decoder.encoder, all_modules): count tensors once
        unique = {v.data_ptr(): v.numel() for v in ckpt["network_weights"].values() if v.is_floating_point()}
        parameters = int(sum(unique.values()))
    del ckpt
    return curves, telemetry, parameters


def _peak_memory(device: str, telemetry: dict[str, Any], maxrss: int | None) -> tuple[int | None, str]:
    """The unit's peak memory and how it was measured."""
    if device == "cuda":
        return telemetry.get("peak_gpu_memory_bytes"), (
            "torch.cuda.max_memory_allocated in the training process (harness telemetry of the arm trainer); "
            "excludes the CUDA context and the allocator's cached blocks")
    if maxrss is not None:
        return maxrss, ("max RSS of the nnUNetv2_train process tree via os.wait4 (ru_maxrss: the largest single "
                        "process, not the sum; covers training and validation of the last attempt)")
    return None, "not measured (training finished in an earlier run)"


def run_unit(ctx: UnitContext) -> dict[str, Any]:
    """Train (or continue), validate, evaluate and record one unit; returns the record (also on failure).

    Never raises for a failing unit (the error goes into the record); ``KeyboardInterrupt`` propagates, leaving no
    record, so the unit is redone (continued) next time.
    """
    unit_dir = ctx.unit_dir
    unit_dir.mkdir(parents=True, exist_ok=True)
    started = utc_now()
    t0 = time.perf_counter()
    rec = _base_record(ctx, started)
    printer = EpochPrinter(ctx.prefix(), int(ctx.budget["num_epochs"]), ctx.stream)
    try:
        device = resolve_device(ctx.device)
        env = {**os.environ, **ctx.env, "PYTHONUNBUFFERED": "1"}
        resumed, rc, wall, maxrss = _train(ctx, device, env, printer)
        rec.update(resumed=resumed, log_file=str(unit_dir / "nnunet_stdout.log"))
        if rc != 0:
            why = f"killed by signal {-rc}" if rc < 0 else f"exit code {rc}"
            tail = _tail(unit_dir / "nnunet_stderr.log") or _tail(unit_dir / "nnunet_stdout.log")
            raise RuntimeError(f"nnUNetv2_train failed ({why}); tail of its stderr:\n{tail}")

        curves, telemetry, parameters = _final_checkpoint_facts(ctx.nnunet_fold_dir)
        epoch_times = (curves or {}).get("epoch_time_s", [])
        it_per_epoch = int(ctx.budget["num_iterations_per_epoch"])
        med_epoch = median(epoch_times)
        peak, peak_source = _peak_memory(device, telemetry, maxrss)

        printer.emit("evaluate | metrics on the validation cases")
        metrics = evaluate_validation(ctx)
        rec.update(
            status="done",
            device=describe_device(device, telemetry),
            iteration_time_s=None if med_epoch is None else med_epoch / it_per_epoch,
            iteration_time_source=(
                "median epoch wall time from nnU-Net's epoch timestamps / training iterations per epoch (so it "
                "includes the epoch's validation iterations and checkpoint writing)"
            ),
            peak_memory_bytes=peak,
            peak_memory_source=peak_source,
            parameters=parameters,
            block_options=telemetry.get("block_options"),
            curves=curves,
            metrics=metrics,
            telemetry=telemetry or None,
            timing={
                "epochs": len(epoch_times),
                "epoch_time_s_median": med_epoch,
                "training_time_s": float(sum(epoch_times)) if epoch_times else None,
                "train_step_time_s_median": telemetry.get("train_step_time_s_median"),
                "subprocess_wall_time_s": wall,
            },
            validation_cases=sorted({r["case"] for r in metrics.get("per_case", [])}),
        )
        dice = [r.get("dice") for r in metrics.get("per_case", []) if r.get("dice") is not None]
        mean_dice = sum(dice) / len(dice) if dice else math.nan
        printer.emit(f"done | mean Dice {mean_dice:.4f} over {len(dice)} case-label pairs", always=True)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - whatever breaks one unit is recorded; the others go on
        rec["status"] = "failed"
        msg = str(e) if isinstance(e, RuntimeError) and "nnUNetv2_train" in str(e) else traceback.format_exc()
        rec["error"] = msg[-ERROR_TAIL_CHARS:]
        printer.emit(f"FAILED | {str(e).splitlines()[0] if str(e) else type(e).__name__} "
                     f"(full error in {unit_dir / 'record.json'})", always=True)
    rec["wall_time_s"] = time.perf_counter() - t0
    rec["finished"] = utc_now()
    write_json_atomic(unit_dir / RECORD_FILE, json_safe(rec))
    return rec


def run_unit_job(ctx: UnitContext) -> str:
    """Entry point of one submitit job: run the unit unless it already has a final record; return its status."""
    existing = read_record(ctx.unit_dir)
    if existing is not None and existing["status"] == "done":
        return "done"
    return run_unit(ctx)["status"]


# ------------------------------------------------------------------------------------------------ executors
class LocalExecutor:
    """Units one after the other on this machine."""

    name = "local"

    def run(self, contexts: list[UnitContext]) -> None:
        for ctx in contexts:
            run_unit(ctx)


def parse_slurm_time(text: str | int | None) -> int | None:
    """Minutes (rounded up) from SLURM's ``--time`` formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``; an int is minutes."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        minutes = text
    else:
        s = str(text).strip()
        try:
            days, rest = (s.split("-", 1) if "-" in s else ("0", s))
            parts = [int(p) for p in rest.split(":")]
            d = int(days)
        except ValueError:
            raise ValueError(f"cannot read SLURM time {text!r}; use minutes, H:M:S or D-H:M:S") from None
        if len(parts) > 3 or any(p < 0 for p in parts) or d < 0:
            raise ValueError(f"cannot read SLURM time {text!r}; use minutes, H:M:S or D-H:M:S")
        if "-" in s:
            h, m, sec = (parts + [0, 0])[:3]
        else:
            h, m, sec = {1: (0, parts[0], 0), 2: (0, parts[0], parts[1] if len(parts) > 1 else 0),
                         3: tuple(parts)}[len(parts)]
        minutes = d * 24 * 60 + h * 60 + m + (1 if sec > 0 else 0)
    if minutes <= 0:
        raise ValueError(f"SLURM time {text!r} must be positive")
    return int(minutes)


class SubmititExecutor:
    """One submitit job per unit (``slurm``; ``submitit-local`` / ``submitit-debug`` for trying it locally)."""

    CLUSTERS: ClassVar[dict[str, str]] = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}

    def __init__(self, config, results_dir: Path, suite_name: str):
        if config.kind not in self.CLUSTERS:
            raise ValueError(f"submitit executor kind must be one of {list(self.CLUSTERS)}, got {config.kind!r}")
        self.config = config
        self.results_dir = Path(results_dir)
        self.suite_name = suite_name
        self.name = config.kind

    def _executor(self):
        try:
            import submitit
        except ImportError as e:  # pragma: no cover
            raise RuntimeError("the slurm executor needs submitit: pip install 'nnunet-tubeconv[cluster]'") from e
        cluster = self.CLUSTERS[self.config.kind]
        ex = submitit.AutoExecutor(folder=str(self.results_dir / "submitit" / "%j"), cluster=cluster)
        c = self.config
        params: dict[str, Any] = {"name": f"tubeconv-{self.suite_name}"}
        if c.timeout_min is not None:
            params["timeout_min"] = int(c.timeout_min)
        elif cluster != "slurm":
            # submitit's local executors kill jobs after 2 minutes by default; a unit trains for hours
            params["timeout_min"] = 14 * 24 * 60
        if c.gpus_per_node is not None:
            params["gpus_per_node"] = int(c.gpus_per_node)
        if c.cpus_per_task is not None:
            params["cpus_per_task"] = int(c.cpus_per_task)
        if c.mem_gb is not None:
            params["mem_gb"] = float(c.mem_gb)
        if cluster == "slurm":
            if c.slurm_partition:
                params["slurm_partition"] = c.slurm_partition
            if c.array_parallelism:
                params["slurm_array_parallelism"] = int(c.array_parallelism)
            if c.slurm_additional_parameters:
                params["slurm_additional_parameters"] = dict(c.slurm_additional_parameters)
        ex.update_parameters(**params)
        return ex

    def _reattach(self, ctx: UnitContext):
        """A still-running SLURM job of this unit from an earlier runner, or None."""
        if self.config.kind != "slurm":
            return None
        info = _load_json(ctx.unit_dir / "submitit_job.json")
        if not info:
            return None
        try:
            import submitit

            job = submitit.SlurmJob(folder=info["folder"], job_id=str(info["job_id"]))
            return None if job.done() else job
        except Exception:  # noqa: BLE001 - an unknown or purged job is simply resubmitted
            return None

    def run(self, contexts: list[UnitContext]) -> None:
        pending: list[tuple[UnitContext, Any]] = []
        to_submit = []
        for ctx in contexts:
            ctx.stream = self.config.kind == "submitit-debug"
            job = self._reattach(ctx)
            if job is not None:
                print(f"{ctx.prefix()} slurm | re-attached to running job {job.job_id}", flush=True)
                pending.append((ctx, job))
            else:
                to_submit.append(ctx)
        if to_submit:
            from nnunet_tubeconv.benchmarks.slurm_job import UnitJob

            ex = self._executor()
            if self.config.kind == "slurm":
                with ex.batch():
                    jobs = [ex.submit(UnitJob(run_unit_job), ctx) for ctx in to_submit]
            else:
                jobs = [ex.submit(UnitJob(run_unit_job), ctx) for ctx in to_submit]
            for ctx, job in zip(to_submit, jobs):
                write_json_atomic(ctx.unit_dir / "submitit_job.json",
                                  {"job_id": str(job.job_id), "folder": str(self.results_dir / "submitit" / "%j"),
                                   "kind": self.config.kind, "submitted": utc_now()})
                print(f"{ctx.prefix()} {self.config.kind} | submitted job {job.job_id}", flush=True)
                pending.append((ctx, job))
        self._wait(pending)

    def _wait(self, pending: list[tuple[UnitContext, Any]]) -> None:
        total = len(pending)
        finished = 0
        interval = self.config.poll_interval_s if self.config.kind == "slurm" else min(2.0, self.config.poll_interval_s)
        while pending:
            still = []
            for ctx, job in pending:
                if self.config.kind == "submitit-debug" or job.done():
                    status = self._collect(ctx, job)
                    finished += 1
                    print(f"{ctx.prefix()} job {job.job_id} ended: {status} ({finished}/{total} jobs)", flush=True)
                else:
                    still.append((ctx, job))
            pending = still
            if pending:
                time.sleep(interval)

    @staticmethod
    def _collect(ctx: UnitContext, job) -> str:
        try:
            status = job.result()
        except Exception as e:  # noqa: BLE001 - the job died before writing a record (time limit, node failure)
            rec = read_record(ctx.unit_dir)
            if rec is not None:
                return rec["status"]
            started = utc_now()
            failed = _base_record(ctx, started)
            failed.update(error=f"submitit job {job.job_id} failed without a record:\n{str(e)[-ERROR_TAIL_CHARS:]}",
                          finished=utc_now())
            write_json_atomic(ctx.unit_dir / RECORD_FILE, json_safe(failed))
            return "failed"
        return str(status)


def make_executor(config, results_dir: Path, suite_name: str):
    if config.kind == "local":
        return LocalExecutor()
    return SubmititExecutor(config, results_dir, suite_name)
