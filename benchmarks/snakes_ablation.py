"""Why DSConv's snakes do not follow vessels under nnU-Net's training: an ablation of the swing branch on DRIVE.

Issue 11. Arms (all ``nnUNetTrainerDSConv`` with explicit swing-branch block options, plus vanilla nnU-Net for the
Dice reference), trained through the resumable harness (``nnunet-tubeconv benchmark``) on nnU-Net's own
cross-validation folds of the 20 annotated DRIVE images (ids 21-40; the DRIVE test images are not used), then
measured with ``nnunet-tubeconv snake-stats`` on each fold's validation images::

    python -m nnunet_tubeconv.benchmarks.snakes_ablation --work /tmp/snakes_ablation \\
        -o benchmarks/results/snakes_ablation_drive.md

Run it again after an interruption: finished trainings are kept (the harness), the statistics are recomputed.

Budget (2 shared CPU cores): nnU-Net's 2d plans of DRIVE reduced to a 128^2 patch, batch 2, 6 stages with widths
16..256 (``nnUNetPlansSnakeAblation``, same preprocessing as ``nnUNetPlans``: full-resolution images), and a short
schedule (``--epochs`` x ``--iterations``). Snake saturation and adherence show within a few hundred iterations; the
Dice of so short a training is not a verdict on the blocks, only a check that a fix costs no accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from nnunet_tubeconv.benchmarks.snakes_drive import DATASET_ID, DEFAULT_DRIVE, _run

PLANS = "nnUNetPlansSnakeAblation"
DATASET = f"Dataset{DATASET_ID:03d}_DRIVE"

#: arm name -> (trainer class, swing block options or None for vanilla, what it tests)
ARMS: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    "vanilla": ("nnUNetTrainer", None, "plain nnU-Net (Dice reference)"),
    "stage_norm": ("nnUNetTrainerDSConvSwingStageNorm", {"snake_swing_norm": "stage", "snake_swing_lr_scale": 1.0},
                   "the default before issue 11: tanh(norm(conv3(x))), network lr"),
    "stage_norm_lr0.1": ("nnUNetTrainerDSConvSwingStageNormLr01",
                         {"snake_swing_norm": "stage", "snake_swing_lr_scale": 0.1},
                         "same, swing branch at 0.1 x lr"),
    "no_norm": ("nnUNetTrainerDSConvSwingNoNorm", {"snake_swing_norm": "none", "snake_swing_lr_scale": 1.0},
                "tanh(conv3(x)): the zero init starts straight and grows"),
    "no_norm_lr0.1": ("nnUNetTrainerDSConvSwingNoNormLr01", {"snake_swing_norm": "none", "snake_swing_lr_scale": 0.1},
                      "no swing norm, swing branch at 0.1 x lr"),
}


def arm_trainer_source() -> str:
    """A module with one nnUNetTrainerDSConv subclass per snake arm (explicit block options, so the arms keep their
    meaning whatever the trainer's defaults become)."""
    lines = [
        '"""Snake-ablation arms (written by nnunet_tubeconv.benchmarks.snakes_ablation)."""',
        "",
        "from types import MappingProxyType",
        "",
        "from nnunet_tubeconv.trainers import nnUNetTrainerDSConv",
        "",
    ]
    for trainer, options, what in ARMS.values():
        if options is None:
            continue
        lines += [
            "",
            f"class {trainer}(nnUNetTrainerDSConv):",
            f'    """{what}"""',
            "",
            f"    block_options = MappingProxyType({options!r})",
            "",
        ]
    return "\n".join(lines)


def reduced_plans(plans: dict, name: str, patch: int, batch: int, stages: int, base_features: int) -> dict:
    """nnU-Net 2d plans cut to a CPU budget: the first ``stages`` stages, widths ``base * 2^i`` (max 256), a square
    ``patch`` and ``batch``; ``data_identifier`` unchanged, so the preprocessed data are shared."""
    plans = json.loads(json.dumps(plans))
    plans["plans_name"] = name
    c2d = plans["configurations"]["2d"]
    kw = c2d["architecture"]["arch_kwargs"]
    if not 3 <= stages <= kw["n_stages"]:
        raise ValueError(f"stages must be between 3 and the planned {kw['n_stages']}, got {stages}")
    kw["n_stages"] = stages
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        kw[key] = kw[key][:stages]
    kw["n_conv_per_stage_decoder"] = kw["n_conv_per_stage_decoder"][: stages - 1]
    divisor = 2 ** sum(1 for s in kw["strides"] if max(s) > 1)
    if patch % divisor or patch // divisor < 2:
        raise ValueError(f"patch must be a multiple of {divisor} and at least {2 * divisor} for these plans")
    c2d["patch_size"] = [patch, patch]
    c2d["batch_size"] = batch
    kw["features_per_stage"] = [min(base_features * 2**i, 256) for i in range(stages)]
    return plans


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drive", default=DEFAULT_DRIVE, help="DRIVE folder (NIfTI layout: Image_Tr/, Label_Tr/)")
    p.add_argument("--work", default="/tmp/nnunet_tubeconv_snakes_ablation", help="nnU-Net folders and runs go here")
    p.add_argument("-o", "--output", default=None, help="markdown table to write (a .json with the numbers beside it)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--stages", type=int, default=6)
    p.add_argument("--base-features", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-only", action="store_true", help="run the trainings, skip the snake statistics")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: the table from the units finished so far (e.g. after stopping a run)")
    args = p.parse_args(argv)

    drive, work = Path(args.drive), Path(args.work).resolve()
    if not (drive / "Image_Tr").is_dir():
        print(f"DRIVE not found at {drive} (expected Image_Tr/ and Label_Tr/)", file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    log = work / "commands.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet")}
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / var).mkdir(exist_ok=True)
        env[var] = str(work / var)
    pre = work / "nnUNet_preprocessed" / DATASET
    if not (pre / "nnUNetPlans.json").is_file():
        _run(["nnunet-tubeconv", "convert", "drive", drive, "-o", env["nnUNet_raw"], "--dataset-id", DATASET_ID,
              "--force"], env, log)
        _run(["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "-np", "1", "-npfp", "1"],
             {**env, "nnUNet_n_proc_DA": "1"}, log)
    plans = reduced_plans(json.loads((pre / "nnUNetPlans.json").read_text()), PLANS, args.patch, args.batch,
                          args.stages, args.base_features)
    plans_file = pre / f"{PLANS}.json"
    if not plans_file.is_file() or json.loads(plans_file.read_text()) != plans:
        plans_file.write_text(json.dumps(plans, indent=2))
    trainers = work / "trainers"
    trainers.mkdir(exist_ok=True)
    (trainers / "snake_ablation_trainers.py").write_text(arm_trainer_source())

    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    os.environ["nnUNet_extTrainer"] = str(trainers)
    from nnunet_tubeconv.benchmarks.runner import run_benchmark
    from nnunet_tubeconv.benchmarks.suite import parse_suite

    arms = {a: {"trainer": ARMS[a][0], "plans": PLANS} for a in args.arms}
    suite = parse_suite({
        "name": "snakes-ablation-drive",
        "datasets": [DATASET],
        "configurations": ["2d"],
        "baseline": "stage_norm" if "stage_norm" in arms else args.arms[0],
        "folds": args.folds,
        "seeds": [0],
        "budget": "snakes",
        "budgets": {"snakes": {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
                               "num_val_iterations_per_epoch": 2, "save_every": 2,
                               "description": "issue-11 snake ablation"}},
        "device": "cpu",
        "arms": arms,
        "env": {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "0",
                "OMP_NUM_THREADS": str(args.threads)},
    })
    results = work / "results"
    if not args.no_train:
        run_benchmark(suite, results, report=False)
    if args.train_only:
        return 0
    from nnunet_tubeconv.deploy.snake_stats import ablation_table

    text, numbers = ablation_table(suite, results, {a: ARMS[a] for a in args.arms}, work / "nnUNet_raw" / DATASET,
                                   work / "stats")
    cmd = "python -m nnunet_tubeconv.benchmarks.snakes_ablation " + " ".join(argv if argv is not None else sys.argv[1:])
    text = text + "\n\nReproduce: `" + cmd + "`\n"
    print(text)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"command": cmd, **numbers}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
