"""The snakes picture of docs/studies/snakes.md: a short DSConv training on DRIVE, then ``nnunet-tubeconv show-snakes``.

DSCNet (Qi et al., ICCV 2023, arXiv 2307.08388) shows its kernels bending along retinal vessels. This script makes
the same kind of picture from a model trained with this package through stock nnU-Net, on CPU, in about ten
minutes of training::

    python -m nnunet_tubeconv.benchmarks.studies.snakes.drive                     # writes docs/images/snakes_drive.png
    python -m nnunet_tubeconv.benchmarks.studies.snakes.drive --minutes 10 --work /tmp/snakes_drive

Steps (all through the public entry points):

1. ``nnunet-tubeconv convert drive /work/shared/data/DRIVE`` (the 20 annotated DRIVE training images, ids 21-40),
   ``nnUNetv2_plan_and_preprocess -c 2d``;
2. a copy of the 2d plans with a smaller patch and batch, fewer stages and narrower ones (``nnUNetPlansSnakesDrive``:
   the CPU budget; the DSConv placement is the trainer's default), and a user-style trainer subclass of
   ``nnUNetTrainerDSConv`` whose epoch count fits ``--minutes`` (it measures the first epoch and stops when the
   budget is spent); final validation is skipped (picture only);
3. ``nnUNetv2_train ... -device cpu`` for fold 0;
4. ``show-snakes`` on a fold-0 *validation* image (not trained on), zoomed to the ``--window`` square that holds
   the most annotated vessel (the annotation only chooses the view; snake positions come from the prediction).

Nothing of DRIVE is written into the repository, only the PNG (kept below 500 KB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

DATASET_ID = 902
PLANS = "nnUNetPlansSnakesDrive"
TRAINER = "nnUNetTrainerDSConvSnakesDrive"
DEFAULT_DRIVE = "/work/shared/data/DRIVE"
REPO = Path(__file__).resolve().parents[3]

TRAINER_SOURCE = textwrap.dedent(
    '''
    """A budgeted nnUNetTrainerDSConv for the snakes picture (written by benchmarks/studies/snakes/drive.py)."""

    import os
    import time

    import torch

    from nnunet_tubeconv.trainers import nnUNetTrainerDSConv


    class _BudgetSpent(Exception):
        pass


    class nnUNetTrainerDSConvSnakesDrive(nnUNetTrainerDSConv):
        """Epochs of SNAKES_ITERS iterations until SNAKES_MINUTES of training are spent; no final validation."""

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = int(os.environ.get("SNAKES_ITERS", "20"))
            self.num_val_iterations_per_epoch = 2
            self.num_epochs = int(os.environ.get("SNAKES_MAX_EPOCHS", "1000"))
            self._budget_s = 60 * float(os.environ.get("SNAKES_MINUTES", "10"))
            self._t0 = None

        def on_train_epoch_start(self):
            if self._t0 is None:
                self._t0 = time.monotonic()
            super().on_train_epoch_start()

        def on_epoch_end(self):
            super().on_epoch_end()
            spent = time.monotonic() - self._t0
            per_epoch = spent / self.current_epoch
            if spent + per_epoch > self._budget_s:
                self.print_to_log_file(f"budget of {self._budget_s:.0f} s reached after {self.current_epoch} epochs")
                self.num_epochs = self.current_epoch
                raise _BudgetSpent  # nnU-Net's loop fixed its epoch range when it started

        def run_training(self):
            try:
                super().run_training()
            except _BudgetSpent:
                self.on_train_end()  # writes checkpoint_final.pth, stops the data loaders

        def perform_actual_validation(self, save_probabilities: bool = False):
            self.print_to_log_file("final validation skipped (picture-only run)")
    '''
)


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def run_logged(args: list, env: dict, log: Path) -> None:
    """Run a command (its arguments made strings) with its output appended to ``log``; exit naming the log when
    it fails."""
    args = [str(a) for a in args]
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(args)}\n")
        f.flush()
        r = subprocess.run([_bin(args[0]), *args[1:]], env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
        f.write(f"# exit {r.returncode}, {time.perf_counter() - t0:.0f} s\n")
    print(f"{args[0]} ... {time.perf_counter() - t0:.0f} s (exit {r.returncode})", flush=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed; see {log}")


def nnunet_work_env(work: Path) -> tuple[dict, Path]:
    """The environment for nnU-Net's commands with its three folders under ``work`` (created), none of the caller's
    own ``nnUNet_*`` variables, and the log the commands append to (``work/commands.log``)."""
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / var).mkdir(exist_ok=True)
        env[var] = str(work / var)
    return env, work / "commands.log"


def best_window(label_file: Path, size: int) -> tuple[int, int, int, int]:
    """(row, col, size, size) of the square holding the most annotated vessel, in the image as nnU-Net reads it."""
    import numpy as np
    import SimpleITK as sitk
    from scipy.ndimage import uniform_filter

    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file))).astype(np.float64)
    lab = lab.reshape(lab.shape[-2:])
    density = uniform_filter(lab, size, mode="constant")
    half = size // 2
    inner = density[half : lab.shape[0] - half, half : lab.shape[1] - half]
    r, c = np.unravel_index(np.argmax(inner), inner.shape)
    return int(r), int(c), size, size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drive", default=DEFAULT_DRIVE, help="DRIVE folder (NIfTI layout: Image_Tr/, Label_Tr/)")
    p.add_argument("--work", default="/tmp/nnunet_tubeconv_snakes_drive", help="nnU-Net folders go here")
    p.add_argument("--output", default=str(REPO / "docs" / "images" / "snakes_drive.png"))
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (wall clock)")
    p.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    p.add_argument("--patch", type=int, default=128, help="square 2d patch size of the budget plans")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--stages", type=int, default=6, help="keep the first N stages of the planned network")
    p.add_argument("--base-features", type=int, default=16, help="width of the first stage (doubling, max 256)")
    p.add_argument("--window", type=int, default=160, help="side of the zoomed view, in pixels")
    p.add_argument("--points", type=int, default=24, help="snakes per DSConv layer")
    p.add_argument("--dpi", type=int, default=120, help="resolution of the PNG (keep it below 500 KB)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)

    drive = Path(args.drive)
    if not (drive / "Image_Tr").is_dir():
        print(f"DRIVE not found at {drive} (expected Image_Tr/ and Label_Tr/)", file=sys.stderr)
        return 2
    work = Path(args.work)
    env, log = nnunet_work_env(work)
    trainers = work / "trainers"
    trainers.mkdir(exist_ok=True)
    (trainers / "snakes_drive_trainer.py").write_text(TRAINER_SOURCE)
    from nnunet_tubeconv.trainers import trainer_folder

    env.update({
        "nnUNet_extTrainer": os.pathsep.join([str(trainers), str(trainer_folder())]),
        "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "0",
        "OMP_NUM_THREADS": str(args.threads), "SNAKES_MINUTES": str(args.minutes),
        "SNAKES_ITERS": str(args.iterations),
    })

    dataset = f"Dataset{DATASET_ID:03d}_DRIVE"
    pre = work / "nnUNet_preprocessed" / dataset
    if not (pre / "nnUNetPlans.json").is_file():
        run_logged(["nnunet-tubeconv", "convert", "drive", drive, "-o", env["nnUNet_raw"], "--dataset-id", DATASET_ID,
              "--force"], env, log)
        run_logged(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1", "-npfp", "1"],
             {**env, "nnUNet_n_proc_DA": "1"}, log)
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["plans_name"] = PLANS
    c2d = plans["configurations"]["2d"]
    kw = c2d["architecture"]["arch_kwargs"]
    if not 3 <= args.stages <= kw["n_stages"]:
        print(f"--stages must be between 3 and the planned {kw['n_stages']}", file=sys.stderr)
        return 2
    n = args.stages  # a shallower U-Net: the first n stages of the plan, decoder to match
    kw["n_stages"] = n
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        kw[key] = kw[key][:n]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: n - 1]
    divisor = 2 ** sum(1 for s in kw["strides"] if max(s) > 1)
    if args.patch % divisor or args.patch // divisor < 2:
        print(f"--patch must be a multiple of {divisor} and at least {2 * divisor} for these plans", file=sys.stderr)
        return 2
    c2d["patch_size"] = [args.patch, args.patch]
    c2d["batch_size"] = args.batch
    kw["features_per_stage"] = [min(args.base_features * 2**i, 256) for i in range(kw["n_stages"])]
    (pre / f"{PLANS}.json").write_text(json.dumps(plans, indent=2))

    model = work / "nnUNet_results" / dataset / f"{TRAINER}__{PLANS}__2d"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        run_logged(["nnUNetv2_train", DATASET_ID, "2d", "0", "-tr", TRAINER, "-p", PLANS, "-device", "cpu"], env, log)
    summary = sorted((model / "fold_0").glob("training_log_*.txt"))
    splits = json.loads((pre / "splits_final.json").read_text())
    case = min(splits[0]["val"])
    image = work / "nnUNet_raw" / dataset / "imagesTr" / f"{case}_0000.nii.gz"
    window = best_window(work / "nnUNet_raw" / dataset / "labelsTr" / f"{case}.nii.gz", args.window)
    out = Path(args.output)
    run_logged(["nnunet-tubeconv", "show-snakes", model, image, "-f", "0", "-o", out, "--points", args.points,
          "--window", *window, "--dpi", args.dpi], env, log)
    size_kb = out.stat().st_size / 1024
    print(f"wrote {out} ({size_kb:.0f} KB) from validation case {case}, window {window}; logs: {log}, "
          f"{', '.join(map(str, summary))}")
    if size_kb > 500:
        print("warning: the picture is larger than 500 KB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
