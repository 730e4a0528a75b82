"""Why DSConv's snakes do not follow vessels under nnU-Net's training: an ablation of the swing branch on DRIVE.

Part of the snakes study (docs/studies/snakes.md). Arms (all ``nnUNetTrainerDSConv`` with explicit swing-branch
block options, plus vanilla nnU-Net for the Dice reference), trained through the resumable harness
(``nnunet-tubeconv benchmark``) on nnU-Net's own cross-validation folds of the 20 annotated DRIVE images (ids 21-40;
the DRIVE test images are not used), then measured with ``nnunet-tubeconv snake-stats`` on each fold's validation
images::

    python -m nnunet_tubeconv.benchmarks.studies.snakes.ablation --work /tmp/snakes_ablation \\
        -o benchmarks/studies/snakes/results/snakes_ablation_drive.md

Run it again after an interruption: finished trainings are kept (the harness), the statistics are recomputed.

``--data synth3d``: the same arms and statistics for nnU-Net 3d_fullres on the synthetic 3D vessel trees (swing in
two axes). ``--snapshots 125 250``: the arms also write checkpoints after those training iterations, and the table
gains the snake statistics along training. ``--tag T``: a second run (another budget) in the same ``--work``;
``--also T``: the table reads finished units of run ``T`` as well (arms trained in parallel as separate runs).
The placement arms ``decoder_only`` and ``encoder_only`` keep the default's swing branch and put its snakes on one
side only; ``no_deep_supervision`` trains the default without nnU-Net's deep supervision. ``--baseline ARM`` pairs
every arm with that one; ``--seeds`` trains every arm with several seeds and ``--baseline-seeds`` only the baseline
(its seed-to-seed noise floor, as the harness does).

Budget (2 shared CPU cores): nnU-Net's 2d plans of DRIVE cut to a 128^2 patch, batch 2, 6 stages with widths
16..256 (``nnUNetPlansSnakeAblation``, cut by :func:`nnunet_tubeconv.planning.cpu.cut_plans`; same preprocessing as
``nnUNetPlans``: full-resolution images), and a short schedule (``--epochs`` x ``--iterations``). Snake saturation
and adherence show within a few hundred iterations; the Dice of so short a training is not a verdict on the blocks,
only a check that a fix costs no accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnunet_tubeconv.benchmarks.studies.snakes.drive import DATASET_ID, DEFAULT_DRIVE, nnunet_work_env, run_logged
from nnunet_tubeconv.data.synthetic import DEFAULT_DATASET_ID, DEFAULT_NAME

PLANS = "nnUNetPlansSnakeAblation"
DATASET = f"Dataset{DATASET_ID:03d}_DRIVE"
SYNTH3D_CASES = 24  #: the 3D arm's synthetic set: cases of SYNTH3D_SHAPE (nnunet-tubeconv synth --dim 3)
SYNTH3D_SHAPE = (64, 64, 64)

#: --data -> (nnU-Net data set, configuration, what the table says about it)
DATA: dict[str, tuple[str, str, str]] = {
    "drive": (DATASET, "2d", ("nnU-Net 2d on DRIVE: validation cases of nnU-Net's 5-fold split of the 20 DRIVE "
              "training images (no test image used)")),
    "synth3d": (f"Dataset{DEFAULT_DATASET_ID[3]:03d}_{DEFAULT_NAME[3]}", "3d_fullres",
                (f"nnU-Net 3d_fullres on the synthetic 3D vessel trees (`nnunet-tubeconv synth --dim 3 --num-cases "
                f"{SYNTH3D_CASES} --shape {'x'.join(map(str, SYNTH3D_SHAPE))}`, seed 0): validation cases of nnU-Net's "
                "5-fold split")),
}

#: arm name -> (trainer class, swing block options or None for vanilla, what it tests)
ARMS: dict[str, tuple[str, dict[str, Any] | None, str]] = {
    "stage_norm": ("nnUNetTrainerDSConvSwingStageNorm", {"snake_swing_norm": "stage", "snake_swing_lr_scale": 1.0},
                   "the default before the snakes study: tanh(norm(conv3(x))), network lr"),
    "no_norm": ("nnUNetTrainerDSConvSwingNoNorm", {"snake_swing_norm": "none", "snake_swing_lr_scale": 1.0},
                "tanh(conv3(x)): the zero init starts straight and grows"),
    "no_norm_lr0.1": ("nnUNetTrainerDSConvSwingNoNormLr01", {"snake_swing_norm": "none", "snake_swing_lr_scale": 0.1},
                      "no swing norm, swing branch at 0.1 x lr"),
    "stage_norm_lr0.1": ("nnUNetTrainerDSConvSwingStageNormLr01",
                         {"snake_swing_norm": "stage", "snake_swing_lr_scale": 0.1},
                         "stage norm, swing branch at 0.1 x lr"),
    "decoder_only": ("nnUNetTrainerDSConvDecoderSnakes",
                     {"snake_swing_norm": "none", "snake_swing_lr_scale": 0.1, "conv_block_encoder_stages": []},
                     "placement: the new default's snakes in the decoder only (no encoder snake block)"),
    "encoder_only": ("nnUNetTrainerDSConvEncoderSnakes",
                     {"snake_swing_norm": "none", "snake_swing_lr_scale": 0.1, "conv_block_decoder_stages": []},
                     "placement: the new default's snakes in the encoder only (no decoder snake block)"),
    "no_deep_supervision": ("nnUNetTrainerDSConvNoDeepSupervision",
                            {"snake_swing_norm": "none", "snake_swing_lr_scale": 0.1},
                            "the default's snakes with nnU-Net's deep supervision off (loss on the final output only)"),
    "vanilla": ("nnUNetTrainerNoMirrorValidation", None, "plain nnU-Net (Dice reference)"),
}
#: arms that train without nnU-Net's deep supervision (does a loss head at the snakes' stage make them follow vessels?)
NO_DEEP_SUPERVISION_ARMS = frozenset({"no_deep_supervision"})


def snapshot_name(iterations: int) -> str:
    """File name of the checkpoint an arm writes after ``iterations`` training iterations (``--snapshots``)."""
    return f"checkpoint_it{int(iterations)}.pth"


def arm_trainer_source(snapshots: tuple[int, ...] = ()) -> str:
    """A module with one nnUNetTrainerDSConv subclass per snake arm (explicit block options, so the arms keep their
    meaning whatever the trainer's defaults become) and a vanilla one. Every arm's final validation runs without
    mirroring test-time augmentation (a quarter of the CPU time; the same for every arm). After every epoch whose
    end completes one of ``snapshots`` training iterations, an arm also writes ``snapshot_name(iterations)``."""
    if any(int(n) < 1 for n in snapshots):
        raise ValueError(f"snapshots are training iterations >= 1, got {list(snapshots)}")
    lines = [
        '"""Snake-ablation arms (written by nnunet_tubeconv.benchmarks.studies.snakes.ablation)."""',
        "",
        "from types import MappingProxyType",
        "",
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer",
        "",
        "from nnunet_tubeconv.trainers import nnUNetTrainerDSConv",
        "",
        "",
        "class _NoMirrorValidation:",
        f"    snapshot_iterations = {tuple(sorted({int(n) for n in snapshots}))!r}",
        "",
        "    def perform_actual_validation(self, save_probabilities: bool = False):",
        "        self.inference_allowed_mirroring_axes = None  # no mirroring TTA: the CPU budget",
        "        super().perform_actual_validation(save_probabilities)",
        "",
        "    def on_epoch_end(self):",
        "        super().on_epoch_end()  # increments current_epoch",
        "        done = self.current_epoch * self.num_iterations_per_epoch",
        "        if done in self.snapshot_iterations:",
        "            self.save_checkpoint(f'{self.output_folder}/checkpoint_it{done}.pth')  # = snapshot_name(done)",
        "",
        "",
        "class _NoDeepSupervision:",
        "    def initialize(self):",
        ("        self.enable_deep_supervision = False  # network, loss and data loaders read it in "
         "initialize / on start"),
        "        super().initialize()",
        "",
    ]
    for arm, (trainer, options, what) in ARMS.items():
        base = "nnUNetTrainer" if options is None else "nnUNetTrainerDSConv"
        mixins = "_NoMirrorValidation, _NoDeepSupervision" if arm in NO_DEEP_SUPERVISION_ARMS else "_NoMirrorValidation"
        lines += [
            "",
            f"class {trainer}({mixins}, {base}):",
            f'    """{what}"""',
            "",
        ]
        if options is not None:
            lines += [f"    block_options = MappingProxyType({options!r})", ""]
    return "\n".join(lines)


_METRICS = ("dice", "cldice", "betti0_error", "betti1_error")


def paired_vs_base(arm_cases: dict[str, dict[str, float]], base_cases: dict[str, dict[str, float]],
                   metrics: tuple[str, ...] = _METRICS, arm: str = "arm", base: str = "base",
                   noise: dict[str, float] | None = None) -> dict[str, dict]:
    """Per metric, the harness's paired comparison arm - base over the cases both have
    (``evaluation.stats.paired_comparison``, Holm over ``metrics`` by ``finalise``): mean difference, 95% bootstrap
    CI, sign-flip p, Holm p and verdict; fewer than ``MIN_PAIRS`` pairs get no CI and no test, as in the harness.
    ``noise``: metric -> seed-to-seed noise floor; a difference within it is "no evidence" (the harness's rule)."""
    from nnunet_tubeconv.evaluation.stats import finalise, paired_comparison

    def finite(v):
        return None if v is None or math.isnan(v) else float(v)

    comparisons = finalise([paired_comparison({c: v[m] for c, v in base_cases.items()},
                                              {c: v[m] for c, v in arm_cases.items()}, m, arm, base,
                                              noise=(noise or {}).get(m))
                            for m in metrics])
    return {c.metric: {"cases": c.n, "mean_diff": finite(c.mean_diff),
                       "ci": None if finite(c.ci_low) is None else [c.ci_low, c.ci_high],
                       "p_sign_flip": finite(c.p_value), "p_holm": finite(c.p_holm), "verdict": c.verdict,
                       "noise_floor": c.noise_floor, "note": c.note} for c in comparisons}


def seed_noise_floors(by_seed: dict[int, dict[str, dict[str, float]]], first_seed: int,
                      metrics: tuple[str, ...] = _METRICS) -> dict[str, dict[str, dict]]:
    """One arm's seed-to-seed noise floor: for every other seed and metric, over the cases both seeds have, the mean
    difference seed - ``first_seed``, the floor ``|mean|`` and its 95% CI (``evaluation.stats.noise_floor_ci``).
    ``by_seed``: seed -> case -> metric -> value. Empty without ``first_seed`` or a second seed."""
    from nnunet_tubeconv.evaluation.stats import noise_floor_ci

    out: dict[str, dict[str, dict]] = {}
    if first_seed not in by_seed:
        return out
    for seed in sorted(k for k in by_seed if k != first_seed):
        for m in metrics:
            a = {c: v[m] for c, v in by_seed[seed].items()}
            b = {c: v[m] for c, v in by_seed[first_seed].items()}
            nf = noise_floor_ci(a, b)
            if nf is None:
                continue
            common = sorted(set(a) & set(b))
            out.setdefault(str(seed), {})[m] = {"mean_diff": float(np.mean([a[c] - b[c] for c in common])),
                                                "floor": nf[0], "floor_ci": [nf[1], nf[2]], "cases": len(common)}
    return out


def finished_record(results: Path | list[Path], rel_dir: Path) -> dict | None:
    """The record of a finished (``done``) unit from the first of ``results`` folders that has one, else None: arms
    of one table may have been trained by separate runs (``--tag``, read back with ``--also``)."""
    from nnunet_tubeconv.benchmarks.records import read_record

    for folder in [results] if isinstance(results, Path) else results:
        rec = read_record(folder / rel_dir)
        if rec and rec["status"] == "done":
            return rec
    return None


def _fold_stats(record: dict, val_cases: list[str], raw: Path, cache: Path,
                checkpoint: str = "checkpoint_final.pth") -> dict:
    """snake-stats of one finished snake unit's ``checkpoint`` on its fold's validation cases (cached next to the
    runs)."""
    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder
    from nnunet_tubeconv.deploy.snake_stats import snake_stats

    fold_dir = Path(record["nnunet_output_folder"])
    final = fold_dir / checkpoint
    if cache.is_file() and cache.stat().st_mtime >= final.stat().st_mtime:
        return json.loads(cache.read_text())
    folder = resolve_model_folder(str(fold_dir.parent), str(record["fold"]), None, None, None, final.name)
    stats = snake_stats(load_trained_model(folder), [str(raw / "imagesTr")], str(raw / "labelsTr"), val_cases)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(stats, indent=2))
    return stats


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _spct(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f}%"


def _ci(v) -> str:
    return "-" if not v else f"[{100 * v[0]:+.1f}, {100 * v[1]:+.1f}]"


def _add_layers(into: dict, stats: dict) -> None:
    """Pool one fold's per-layer snake statistics into ``into`` (layer index -> name and per-case values)."""
    for i, layer in enumerate(stats["layers"]):
        entry = into.setdefault(i, {"name": layer["name"], "per_case": {}})
        entry["per_case"].update(layer["per_case"])


def collect_units(suite, results: Path | list[Path], arms: dict, raw: Path, stats_dir: Path, dataset: str,
                  along: list[int]) -> tuple[dict[str, dict], dict[str, dict[int, dict[str, dict[str, float]]]]]:
    """What the tables are made of, from the finished units: per arm (first seed only) its folds, iteration times,
    per-case metrics and per-layer snake statistics (of the final checkpoint and of the ``along`` snapshots); and
    arm -> seed -> case -> metrics of every seed (the seed-to-seed noise floor)."""
    from nnunet_tubeconv.benchmarks.suite import expand_units

    splits = json.loads((Path(os.environ["nnUNet_preprocessed"]) / dataset / "splits_final.json").read_text())
    per_arm: dict[str, dict] = {}
    first_seed = min(suite.seeds)
    by_seed: dict[str, dict[int, dict[str, dict[str, float]]]] = {}  # arm -> seed -> case -> metrics
    for u in expand_units(suite, [dataset]):
        rec = finished_record(results, u.rel_dir)
        if rec is None:
            continue
        for row in rec["metrics"]["per_case"]:
            by_seed.setdefault(u.arm, {}).setdefault(u.seed, {})[row["case"]] = {m: row[m] for m in _METRICS}
        if u.seed != first_seed:  # the tables are of the first seed; the others give the noise floor
            continue
        a = per_arm.setdefault(u.arm, {"folds": [], "iteration_time_s": [], "cases": {}, "layers": {},
                                       "snapshots": {n: {} for n in along}})
        a["folds"].append(u.fold)
        a["iteration_time_s"].append(rec["iteration_time_s"])
        for row in rec["metrics"]["per_case"]:
            a["cases"][row["case"]] = {m: row[m] for m in _METRICS}
        if arms[u.arm][1] is None:
            continue
        val_cases = sorted(splits[u.fold]["val"])
        _add_layers(a["layers"], _fold_stats(rec, val_cases, raw, stats_dir / u.arm / f"fold_{u.fold}.json"))
        for n in along:
            if not (Path(rec["nnunet_output_folder"]) / snapshot_name(n)).is_file():
                continue
            _add_layers(a["snapshots"][n], _fold_stats(rec, val_cases, raw,
                                                       stats_dir / u.arm / f"fold_{u.fold}_it{n}.json",
                                                       snapshot_name(n)))
    return per_arm, by_seed


def verdict_noise_floor(floors_by_arm: dict[str, dict], base: str, arms: dict) -> tuple[str | None,
                                                                                          dict[str, float] | None]:
    """The arm whose seed-to-seed noise floor the verdicts use (the baseline's, the harness's rule, or without one
    the first other arm's) and that floor per metric (the largest over its seeds), or ``(None, None)``."""
    floor_arm = base if floors_by_arm.get(base) else next((a for a in arms if floors_by_arm.get(a)), None)
    noise = None if floor_arm is None else {
        m: max(f[m]["floor"] for f in floors_by_arm[floor_arm].values() if m in f) for m in _METRICS}
    return floor_arm, noise


def _paired_row(arm: str, metric: str, d: dict) -> str:
    d_ci = "-" if not d["ci"] else f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
    ps = ["-" if v is None else f"{v:.3g}" for v in (d["p_sign_flip"], d["p_holm"])]
    return f"| {arm} | {metric} | {d['mean_diff']:+.4f} | {d_ci} | {ps[0]} | {ps[1]} | {d['verdict']} | {d['cases']} |"


def _snake_columns(layers: dict[int, dict]) -> str:
    """The main table's snake columns: most saturated and most tilted layer, worst adherence gain, layers passing."""
    if not layers:
        return "- | - | - | -"
    worst = min(layers.values(), key=lambda s: s.get("adherence_diff", 0.0))
    passing = sum(1 for s in layers.values() if s.get("adherence_diff_ci") and s["adherence_diff_ci"][0] > 0)
    return (f"{_pct(max(s['saturated'] for s in layers.values()))} | "
            f"{_pct(max(s['constant_tilt'] for s in layers.values()))} | "
            f"{_spct(worst.get('adherence_diff'))} {_ci(worst.get('adherence_diff_ci'))} | "
            f"{passing}/{len(layers)}")


def _layer_row(arm: str, s: dict) -> str:
    dir_ci = s.get("direction_diff_ci")
    return (f"| {arm} | {s['name']} | {_pct(s['saturated'])} | {s['mean_step']:.3f} | {_pct(s['tilt'])} | "
            f"{_pct(s['constant_tilt'])} | {_pct(s.get('adherence_snake'))} | {_pct(s.get('adherence_straight'))} | "
            f"{_spct(s.get('adherence_diff'))} {_ci(s.get('adherence_diff_ci'))} | "
            f"{s.get('direction_snake', 0):.3f} | {s.get('direction_straight', 0):.3f} | "
            f"{s.get('direction_diff', 0):+.3f} "
            f"{'' if not dir_ci else f'[{dir_ci[0]:+.3f}, {dir_ci[1]:+.3f}]'} | "
            f"{_spct(s.get('near_vessel_diff'))} {_ci(s.get('near_vessel_diff_ci'))} |")


def _arm_tables(arm: str, per_arm: dict[str, dict], arms: dict, base: str, noise: dict[str, float] | None,
                along: list[int]) -> tuple[dict, str, list[str], list[str]]:
    """One arm's numbers, its row of the main table, its rows of the per-layer table and of the paired table."""
    from nnunet_tubeconv.deploy.snake_stats import summarise

    a = per_arm[arm]
    cases = sorted(a["cases"])
    means = {m: float(sum(a["cases"][c][m] for c in cases) / len(cases)) for m in _METRICS}
    dice_diff, dice_ci, paired, paired_rows = None, None, None, []
    if arm != base and base in per_arm:
        paired = paired_vs_base(a["cases"], per_arm[base]["cases"], arm=arm, base=base, noise=noise)
        if paired["dice"]["cases"]:
            dice_diff, dice_ci = paired["dice"]["mean_diff"], paired["dice"]["ci"]
            paired_rows = [_paired_row(arm, m, d) for m, d in paired.items()]
    layers = {i: {"name": e["name"], **summarise(e["per_case"])} for i, e in sorted(a["layers"].items())}
    it = [t for t in a["iteration_time_s"] if t is not None]
    numbers = {"trainer": arms[arm][0], "options": arms[arm][1], "folds": a["folds"],
               "val_cases": cases, "iteration_time_s": sum(it) / len(it) if it else None,
               "metrics_mean": means, "dice_diff_vs_baseline": dice_diff,
               "dice_diff_ci": dice_ci, "paired_vs_baseline": paired, "per_case_metrics": a["cases"], "layers": layers,
               "layer_per_case": {e["name"]: e["per_case"] for e in a["layers"].values()},
               "snapshots": {str(n): {e["name"]: summarise(e["per_case"]) for e in
                                      a["snapshots"][n].values()} for n in along}}
    row = (f"| {arm} | {arms[arm][2]} | {','.join(map(str, a['folds']))} | {len(cases)} | "
           f"{'-' if not it else f'{sum(it) / len(it):.2f}'} | {means['dice']:.4f} | "
           f"{'-' if dice_diff is None else f'{dice_diff:+.4f}'} "
           f"{'' if not dice_ci else f'[{dice_ci[0]:+.4f}, {dice_ci[1]:+.4f}]'} | {means['cldice']:.4f} | "
           f"{means['betti0_error']:.1f} | {means['betti1_error']:.1f} | {_snake_columns(layers)} |")
    return numbers, row, [_layer_row(arm, s) for s in layers.values()], paired_rows


def _noise_floor_rows(floors_by_arm: dict[str, dict], first_seed: int) -> list[str]:
    rows = ["| arm | metric | seed | mean difference, seed - seed " + str(first_seed) + " | noise floor |mean| "
            "(95% CI) | cases |", "|" + "---|" * 6]
    for arm, floors in floors_by_arm.items():
        for seed, per_metric in floors.items():
            for m, f in per_metric.items():
                rows.append(f"| {arm} | {m} | {seed} | {f['mean_diff']:+.4f} | {f['floor']:.4f} "
                            f"[{f['floor_ci'][0]:.4f}, {f['floor_ci'][1]:.4f}] | {f['cases']} |")
    return rows


def _along_training_text(per_arm: dict[str, dict], arms: dict, along: list[int], total: int) -> list[str]:
    """The table of snake statistics along training (the ``--snapshots`` and the final checkpoint), with its
    caption; empty without snapshots."""
    from nnunet_tubeconv.deploy.snake_stats import summarise

    rows = [("| arm | layer | iterations | saturated | mean step (vox) | same tilt | adherence snake - straight "
             "(95% CI) | direction snake - straight (95% CI) | cases |"), "|" + "---|" * 9]
    for arm in arms:
        if arm not in per_arm or not along or arms[arm][1] is None:
            continue
        steps = [(n, per_arm[arm]["snapshots"][n]) for n in along] + [(total, per_arm[arm]["layers"])]
        for i, entry in sorted(per_arm[arm]["layers"].items()):
            for n, layers_at in steps:
                if i not in layers_at:
                    continue
                s = summarise(layers_at[i]["per_case"])
                dir_ci = s.get("direction_diff_ci")
                rows.append(
                    f"| {arm} | {entry['name']} | {n} | {_pct(s['saturated'])} | {s['mean_step']:.3f} | "
                    f"{_pct(s['constant_tilt'])} | {_spct(s.get('adherence_diff'))} "
                    f"{_ci(s.get('adherence_diff_ci'))} | "
                    f"{s.get('direction_diff', 0):+.3f} "
                    f"{'' if not dir_ci else f'[{dir_ci[0]:+.3f}, {dir_ci[1]:+.3f}]'} | {s['cases']} |")
    return [] if not along else [
        "",
        (f"Along training (checkpoints written after {', '.join(map(str, along))} iterations and the final one at "
         f"{total}; the same poly learning-rate schedule over all {total} iterations, so an earlier snapshot is not "
         "a shorter run's final model):"),
        "",
        *rows,
    ]


def _table_document(suite, data: str, plan: str, floor_arm: str | None, arm_rows: list[str], paired_rows: list[str],
                    noise_rows: list[str], layer_rows: list[str], along_text: list[str]) -> str:
    """The markdown of the ablation: its setting, the per-arm table, the paired comparisons, the noise floor, the
    per-layer table and the snake statistics along training (the tables with rows only)."""
    _dataset, _configuration, data_what = DATA[data]
    b, base, first_seed = suite.budget, suite.baseline, min(suite.seeds)
    title = "DRIVE" if data == "drive" else "synthetic 3D vessel trees"
    rest = sorted(set(suite.seeds) - {first_seed})
    others = f" (and seeds {', '.join(map(str, rest))} for the noise floor)" if rest else ""
    return "\n".join([
        f"# DSConv swing-branch ablation on {title} (the snakes study)",
        "",
        (f"{data_what}; plans `{PLANS}` ({plan}), {b.num_epochs} epochs x {b.num_iterations_per_epoch} iterations, "
        f"CPU, seed {first_seed}{others}. "
        "Every number is a mean over the validation cases of the folds listed, CIs are 95% bootstrap over those "
        "cases. Snake statistics: `nnunet-tubeconv snake-stats` on the same validation cases (whole images, "
        "nnU-Net preprocessing); adherence = mean label at the 8 outer sample points of the positions whose centre "
        "is on the vessel (label max-pooled to the layer's stage), straight = the undeformed kernel at the same "
        "positions; direction = mean |cos| between the snake's chord and the label's structure-tensor direction; "
        "near-vessel = adherence to the label dilated by one layer voxel (on or next to the vessel)."),
        "",
        *arm_rows,
        *([] if len(paired_rows) == 2 else [
            "",
            (f"Paired over the validation cases both arms have (same images, same folds, seed {first_seed}; Betti "
             f"errors: lower is better), against {base}, with the harness's statistics (Holm over the four metrics; "
             "no CI and no test below 6 pairs; a difference within the seed-to-seed noise floor below, "
             f"{'not measured' if floor_arm is None else 'of ' + floor_arm}, is no evidence):"),
            "",
            *paired_rows]),
        *([] if len(noise_rows) == 2 else [
            "",
            (f"Seed-to-seed noise floor: the same arm trained again with another seed (same folds, same images), "
             f"per-case difference against seed {first_seed}; a difference between arms within this floor is no "
             "evidence of a difference:"),
            "",
            *noise_rows]),
        "",
        "Per DSConv layer:",
        "",
        *layer_rows,
        *along_text,
    ])


def ablation_table(suite, results: Path | list[Path], arms: dict, raw: Path, stats_dir: Path, plan: str,
                   data: str = "drive", snapshots: tuple[int, ...] = ()) -> tuple[str, dict]:
    """Markdown tables (per arm; per arm and DSConv layer; with ``snapshots``, per arm, layer and training
    iterations) from the finished units, and the numbers behind them.

    Per-case values of all finished folds are pooled (the validation cases of different folds are different
    images), so each CI is over every validation case run so far.
    """
    dataset = DATA[data][0]
    total = suite.budget.num_epochs * suite.budget.num_iterations_per_epoch
    along = sorted({n for n in snapshots if n < total})
    per_arm, by_seed = collect_units(suite, results, arms, raw, stats_dir, dataset, along)
    base, first_seed = suite.baseline, min(suite.seeds)
    numbers: dict[str, Any] = {"baseline": base, "arms": {}}
    arm_rows = [(f"| arm | what | folds | val cases | s/iter | Dice | Dice - {base} (95% CI) | clDice | Betti-0 err | "
                 "Betti-1 err | saturated (max layer) | same tilt (max layer) | adherence snake - straight, worst "
                 "layer (95% CI) | layers with adherence CI > 0 |"),
                "|" + "---|" * 14]
    layer_rows = [("| arm | layer | saturated | mean step (vox) | tilt | same tilt | adherence snake | adherence "
                   "straight | diff (95% CI) | direction snake | direction straight | diff (95% CI) | near-vessel "
                   "snake - straight (95% CI) |"),
                  "|" + "---|" * 13]
    paired_rows = [(f"| arm | metric | mean difference, arm - {base} | 95% CI | p (paired sign-flip) | p (Holm) | "
                    "verdict | cases |"), "|" + "---|" * 8]
    floors_by_arm = {arm: seed_noise_floors(seeds, first_seed) for arm, seeds in by_seed.items() if arm in arms}
    floor_arm, noise = verdict_noise_floor(floors_by_arm, base, arms)
    numbers["noise_floor_arm"] = floor_arm
    for arm in arms:
        if arm not in per_arm:
            continue
        numbers["arms"][arm], row, rows, paired = _arm_tables(arm, per_arm, arms, base, noise, along)
        arm_rows.append(row)
        layer_rows += rows
        paired_rows += paired
    for arm, floors in floors_by_arm.items():
        if floors:
            numbers["arms"].setdefault(arm, {})["noise_floor"] = floors
    text = _table_document(suite, data, plan, floor_arm, arm_rows, paired_rows,
                           _noise_floor_rows(floors_by_arm, first_seed), layer_rows,
                           _along_training_text(per_arm, arms, along, total))
    return text, numbers


def draw_pictures(suite, results: Path | list[Path], arms: dict, raw: Path, folder: Path,
                  window: int = 160) -> list[Path]:
    """show-snakes of each finished snake arm on the first fold's first validation case (same window for all)."""
    from nnunet_tubeconv.benchmarks.studies.snakes.drive import best_window
    from nnunet_tubeconv.benchmarks.suite import expand_units
    from nnunet_tubeconv.deploy.model_folder import load_trained_model, resolve_model_folder
    from nnunet_tubeconv.deploy.snakes import show_snakes

    fold = suite.folds[0]
    splits = json.loads((Path(os.environ["nnUNet_preprocessed"]) / DATASET / "splits_final.json").read_text())
    case = min(splits[fold]["val"])
    box = best_window(raw / "labelsTr" / f"{case}.nii.gz", window)
    written = []
    for u in expand_units(suite, [DATASET]):
        rec = finished_record(results, u.rel_dir)
        if u.fold != fold or u.seed != min(suite.seeds) or arms[u.arm][1] is None or rec is None:
            continue
        fold_dir = Path(rec["nnunet_output_folder"])
        model = load_trained_model(resolve_model_folder(str(fold_dir.parent), str(fold), None, None, None,
                                                        "checkpoint_final.pth"))
        out = folder / f"snakes_drive_{u.arm.replace('.', '')}.png"
        show_snakes(model, [str(raw / "imagesTr" / f"{case}_0000.nii.gz")], out, points=24, window=box, dpi=90)
        print(f"wrote {out} ({u.arm}, fold {fold}, validation case {case}, window {box})")
        written.append(out)
    return written


def suite_arms(arm_names: Sequence[str], seeds: Sequence[int], baseline: str,
               baseline_seeds: Sequence[int] | None = None) -> dict[str, dict[str, Any]]:
    """The harness's arm table: every arm on its own trainer and the ablation's plans, with explicit seeds (so the
    harness adds no second baseline seed unasked: this CPU budget cannot always afford one); ``baseline_seeds``, when
    given, replace the baseline's, e.g. to train it twice for the seed-to-seed noise floor."""
    arms = {a: {"trainer": ARMS[a][0], "plans": PLANS, "seeds": sorted(set(seeds))} for a in arm_names}
    if baseline_seeds is not None:
        arms[baseline]["seeds"] = sorted(set(baseline_seeds))
    return arms


def first_steps(steps: int = 3, seed: int = 0) -> str:
    """The snakes study's unit-level experiment: a fresh ``DSConv(nn.Conv2d, 32, 32, K=9, axis=0)`` with InstanceNorm,
    random input and target, ``steps`` SGD steps at nnU-Net's settings (lr 1e-2, momentum 0.99, Nesterov, weight
    decay 3e-5); mean |delta| and the fraction beyond |tanh| = 0.95 after each step, per swing-branch setting."""
    import torch
    from torch import nn

    from nnunet_tubeconv.blocks.dsconv import DSConv
    from nnunet_tubeconv.trainers.tubeconv_base import lr_scaled_param_groups

    lines = ["| swing branch | " + " | ".join(f"after step {i}" for i in range(steps + 1)) + " |",
             "|---|" + "---|" * (steps + 1)]
    for norm, scale in (("stage", 1.0), ("stage", 0.01), ("none", 1.0), ("none", 0.1)):
        torch.manual_seed(seed)
        m = DSConv(nn.Conv2d, 32, 32, kernel_size=9, axis=0, norm_op=nn.InstanceNorm2d,
                   norm_op_kwargs={"affine": True}, swing_norm=norm, swing_lr_scale=scale)
        groups = lr_scaled_param_groups(m)
        for g in groups:
            g["lr"] = 1e-2 * g["lr_scale"]
        opt = torch.optim.SGD(groups, 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
        x, target = torch.randn(2, 32, 48, 48), torch.randn(2, 32, 48, 48)
        cells = []
        for step in range(steps + 1):
            with torch.no_grad():
                d = m.swing(x)
            cells.append(f"{d.abs().mean().item():.4f} ({100 * (d.abs() > 0.95).float().mean().item():.1f}%)")
            if step < steps:
                loss = ((m(x) - target) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
        lines.append(f"| swing_norm={norm}, lr x{scale:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=list(DATA), default="drive",
                   help="drive: nnU-Net 2d on the 20 DRIVE training images; synth3d: nnU-Net 3d_fullres on "
                   f"{SYNTH3D_CASES} synthetic 3D vessel trees of {'x'.join(map(str, SYNTH3D_SHAPE))} (swing in two "
                   "axes)")
    p.add_argument("--drive", default=DEFAULT_DRIVE, help="DRIVE folder (NIfTI layout: Image_Tr/, Label_Tr/)")
    p.add_argument("--work", default="/tmp/nnunet_tubeconv_snakes_ablation", help="nnU-Net folders and runs go here")
    p.add_argument("-o", "--output", default=None, help="markdown table to write (a .json with the numbers beside it)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--baseline", default=None, choices=list(ARMS),
                   help="the arm every other is paired against (default: stage_norm when it runs, else the first arm)")
    p.add_argument("--folds", type=int, nargs="+", default=[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--stages", type=int, default=6)
    p.add_argument("--base-features", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train every arm with these seeds; tables and snake statistics are of the first, the others "
                   "give the seed-to-seed noise floor of Dice, clDice and Betti errors")
    p.add_argument("--baseline-seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="the baseline arm's seeds instead of --seeds (they must include the first of --seeds): e.g. "
                   "--seeds 0 --baseline-seeds 0 1 trains the baseline twice for the noise floor, as the harness "
                   "does, and the other arms once")
    p.add_argument("--snapshots", type=int, nargs="+", default=[], metavar="ITERATIONS",
                   help="also write a checkpoint after these training iterations (epoch ends) and tabulate the snake "
                   "statistics along training")
    p.add_argument("--also", nargs="+", default=[], metavar="TAG",
                   help="tables and pictures also read finished units of these tags' runs (e.g. arms trained in "
                   "parallel as separate runs of the same budget)")
    p.add_argument("--tag", default="", help="a second run in the same --work (e.g. a longer budget): its own trainer "
                   "names, runs and statistics, sharing the data and preprocessing")
    p.add_argument("--train-only", action="store_true", help="run the trainings, skip the snake statistics")
    p.add_argument("--pictures", default=None, metavar="DIR",
                   help="also draw show-snakes of every finished snake arm of the first fold on its first validation "
                   "case, zoomed to the densest vessel window, into DIR/snakes_drive_<arm>.png")
    p.add_argument("--first-steps", action="store_true",
                   help="only the unit-level experiment: a fresh DSConv's mean |swing| over nnU-Net's first SGD steps")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: the table from the units finished so far (e.g. after stopping a run)")
    return p


def _check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``p.error`` (naming what is allowed) on seeds, baseline or tag the ablation cannot use."""
    if any(seed < 0 for seed in args.seeds):
        p.error(f"--seeds must be integers >= 0 (they seed random, numpy and torch), got {args.seeds}")
    if args.baseline_seeds is not None and (any(seed < 0 for seed in args.baseline_seeds)
                                            or min(args.seeds) not in args.baseline_seeds):
        p.error(f"--baseline-seeds must be integers >= 0 that include the first of --seeds ({min(args.seeds)}: the "
                f"arms are paired on it), got {args.baseline_seeds}")
    if args.baseline is not None and args.baseline not in args.arms:
        p.error(f"--baseline {args.baseline} is not one of the arms run ({', '.join(args.arms)})")
    if args.tag and not args.tag.isalnum():
        p.error(f"--tag must be letters and digits (it goes into nnU-Net trainer names), got {args.tag!r}")


def prepare_data(data: str, drive: Path, env: dict, log: Path) -> Path:
    """The data set converted (DRIVE) or generated (synth3d) and planned and preprocessed by nnU-Net, unless that
    was done before; returns its nnU-Net preprocessed folder."""
    dataset, configuration, _ = DATA[data]
    pre = Path(env["nnUNet_preprocessed"]) / dataset
    if (pre / "nnUNetPlans.json").is_file():
        return pre
    if data == "drive":
        run_logged(["nnunet-tubeconv", "convert", "drive", drive, "-o", env["nnUNet_raw"], "--dataset-id", DATASET_ID,
                    "--force"], env, log)
    else:
        run_logged(["nnunet-tubeconv", "synth", "--dim", 3, "--num-cases", SYNTH3D_CASES, "--shape",
                    "x".join(map(str, SYNTH3D_SHAPE)), "-o", env["nnUNet_raw"], "--force"], env, log)
    run_logged(["nnUNetv2_plan_and_preprocess", "-d", dataset.split("_")[0][len("Dataset"):], "-c", configuration,
                "-np", "1", "-npfp", "1"], {**env, "nnUNet_n_proc_DA": "1"}, log)
    return pre


def write_plans(pre: Path, configuration: str, patch: int, batch: int, stages: int, base_features: int) -> dict:
    """``PLANS``: nnU-Net's plans in ``pre`` with ``configuration`` cut by
    :func:`nnunet_tubeconv.planning.cpu.cut_plans` (the data identifier kept: the preprocessed data are shared),
    written beside them unless already there."""
    from nnunet_tubeconv.planning.cpu import cut_plans

    plans = cut_plans(json.loads((pre / "nnUNetPlans.json").read_text()), PLANS, configuration, patch, batch, stages,
                      base_features)
    plans_file = pre / f"{PLANS}.json"
    if not plans_file.is_file() or json.loads(plans_file.read_text()) != plans:
        plans_file.write_text(json.dumps(plans, indent=2))
    return plans


def plans_description(configuration: str, patch: int, batch: int, stages: int, base_features: int) -> str:
    """How the table names the cut plans."""
    dim = 2 if configuration == "2d" else 3
    return (f"nnUNetPlans {configuration} cut to patch {patch}^{dim}, batch {batch}, {stages} stages of widths "
            f"{base_features}..{min(base_features * 2 ** (stages - 1), 256)}")


def ablation_suite(args: argparse.Namespace):
    """The harness's suite of the ablation: every arm on the cut plans, CPU, the short budget."""
    from nnunet_tubeconv.benchmarks.suite import parse_suite

    dataset, configuration, _ = DATA[args.data]
    seeds = sorted(set(args.seeds))
    baseline = args.baseline or ("stage_norm" if "stage_norm" in args.arms else args.arms[0])
    return parse_suite({
        "name": f"snakes-ablation-{args.data}{args.tag}",
        "datasets": [dataset],
        "configurations": [configuration],
        "baseline": baseline,
        "folds": args.folds,
        "seeds": seeds,
        "budget": f"snakes{args.tag}",
        "budgets": {f"snakes{args.tag}": {"num_epochs": args.epochs, "num_iterations_per_epoch": args.iterations,
                               "num_val_iterations_per_epoch": 2, "save_every": 2,
                               "description": "the snakes study's swing-branch ablation"}},
        "device": "cpu",
        "arms": suite_arms(args.arms, seeds, baseline, args.baseline_seeds),
        "env": {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1", "nnUNet_compile": "0",
                "OMP_NUM_THREADS": str(args.threads)},
    })


def _write_report(args: argparse.Namespace, argv: list[str] | None, suite, work: Path, sources: list[Path]) -> None:
    """The tables (printed, and with ``-o`` written with their numbers) and, with ``--pictures``, the pictures."""
    dataset, configuration, _ = DATA[args.data]
    text, numbers = ablation_table(suite, sources, {a: ARMS[a] for a in args.arms}, work / "nnUNet_raw" / dataset,
                                   work / f"stats{args.tag}",
                                   plans_description(configuration, args.patch, args.batch, args.stages,
                                                     args.base_features),
                                   args.data, tuple(args.snapshots))
    shown = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--no-train", "--train-only")]
    cmd = "python -m nnunet_tubeconv.benchmarks.studies.snakes.ablation " + " ".join(shown)
    text = text + "\n\nReproduce: `" + cmd + "`\n"
    print(text)
    if args.pictures and args.data == "drive":
        draw_pictures(suite, sources, {a: ARMS[a] for a in args.arms}, work / "nnUNet_raw" / DATASET,
                      Path(args.pictures))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps({"command": cmd, **numbers}, indent=2))


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.first_steps:
        print(first_steps())
        return 0
    _check_arguments(p, args)
    configuration = DATA[args.data][1]
    drive, work = Path(args.drive), Path(args.work).resolve()
    if args.data == "drive" and not (drive / "Image_Tr").is_dir():
        print(f"DRIVE not found at {drive} (expected Image_Tr/ and Label_Tr/)", file=sys.stderr)
        return 2
    env, log = nnunet_work_env(work)
    pre = prepare_data(args.data, drive, env, log)
    write_plans(pre, configuration, args.patch, args.batch, args.stages, args.base_features)
    trainers = work / f"trainers{args.tag}"  # a tag's trainers (its snapshots) apart from the others
    trainers.mkdir(exist_ok=True)
    (trainers / "snake_ablation_trainers.py").write_text(arm_trainer_source(tuple(args.snapshots)))

    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    os.environ["nnUNet_extTrainer"] = str(trainers)
    from nnunet_tubeconv.benchmarks.runner import run_benchmark

    suite = ablation_suite(args)
    results = work / f"results{args.tag}"
    if not args.no_train:
        run_benchmark(suite, results, report=False)
    if args.train_only:
        return 0
    # the harness's generated arm trainers (what the checkpoints name) and ours, for loading the models here
    # (of this run and of every --also run)
    sources = [results, *(work / f"results{t}" for t in args.also)]
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(
        [str(r / "trainers") for r in sources] + [str(trainers), *(str(work / f"trainers{t}") for t in args.also)])
    _write_report(args, argv, suite, work, sources)
    return 0


if __name__ == "__main__":
    sys.exit(main())
