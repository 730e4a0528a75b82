"""The snake swing-branch ablation script's pure parts: the plans it writes, the generated arm trainers, its
statistics and its argument checks. (The cut of the plans itself is tested with its owner, in test_planning_cpu.py.)"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
from support.plans import tiny_plans

from nnunet_tubeconv.benchmarks.studies.snakes.ablation import ARMS, arm_trainer_source


def test_arm_trainers_set_both_swing_options_explicitly(tmp_path):
    module = _load_arm_module(tmp_path, ())
    for trainer, options, _ in ARMS.values():
        cls = getattr(module, trainer)
        if options is None:
            assert not hasattr(cls, "variant") or cls.variant is None
            continue
        assert dict(cls.block_options) == options
        # both swing options explicit: immune to later default changes; a placement arm adds its stage selection
        assert {"snake_swing_norm", "snake_swing_lr_scale"} <= set(options)
        assert set(options) - {"snake_swing_norm", "snake_swing_lr_scale"} <= {"conv_block_encoder_stages",
                                                                                "conv_block_decoder_stages"}
        assert "perform_actual_validation" in dir(cls)


def test_only_the_no_deep_supervision_arm_turns_deep_supervision_off_before_nnunet_initialises(tmp_path):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import NO_DEEP_SUPERVISION_ARMS

    module = _load_arm_module(tmp_path, ())
    assert NO_DEEP_SUPERVISION_ARMS and NO_DEEP_SUPERVISION_ARMS <= set(ARMS)
    for arm, (trainer, _, _) in ARMS.items():
        cls = getattr(module, trainer)
        assert (module._NoDeepSupervision in cls.__mro__) == (arm in NO_DEEP_SUPERVISION_ARMS)

    class Recorder:  # stands for nnUNetTrainer.initialize, which builds network, loss and loaders from the flag
        enable_deep_supervision = True

        def initialize(self):
            self.seen = self.enable_deep_supervision

    class Probe(module._NoDeepSupervision, Recorder):
        pass

    probe = Probe()
    probe.initialize()
    assert probe.seen is False


def _load_arm_module(tmp_path, snapshots):
    """Import the generated arm-trainer module as nnU-Net's nnUNet_extTrainer lookup would."""
    f = tmp_path / "snake_ablation_trainers.py"
    f.write_text(arm_trainer_source(snapshots))
    spec = importlib.util.spec_from_file_location("snake_ablation_trainers", f)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arm_trainers_write_snapshot_checkpoints_at_the_listed_iterations(tmp_path):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import snapshot_name

    module = _load_arm_module(tmp_path, (100, 50, 60))

    class FakeTrainer:  # nnU-Net's on_epoch_end increments current_epoch after its own checkpointing
        current_epoch, num_iterations_per_epoch, output_folder = 0, 25, "OUT"

        def __init__(self):
            self.saved = []

        def on_epoch_end(self):
            self.current_epoch += 1

        def save_checkpoint(self, filename):
            self.saved.append(filename)

    trainer = type("T", (module._NoMirrorValidation, FakeTrainer), {})()
    for _ in range(5):  # 125 iterations: epoch ends at 25, 50, 75, 100, 125 (60 is no epoch end)
        trainer.on_epoch_end()
    assert trainer.saved == [f"OUT/{snapshot_name(50)}", f"OUT/{snapshot_name(100)}"]
    assert snapshot_name(50) == "checkpoint_it50.pth"
    none = type("T", (_load_arm_module(tmp_path, ())._NoMirrorValidation, FakeTrainer), {})()
    none.on_epoch_end()
    assert none.saved == []
    with pytest.raises(ValueError, match="snapshots are training iterations >= 1"):
        arm_trainer_source((0, 25))


def test_the_ablation_writes_nnunets_plans_cut_by_the_planning_rule(tmp_path):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import PLANS, plans_description, write_plans
    from nnunet_tubeconv.planning.cpu import cut_plans

    planned = (32, 64, 128, 256, 512, 512, 512, 512)  # DRIVE's 2d plans: 8 stages, 32..512
    plans = tiny_plans(planned)
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(plans))
    out = write_plans(tmp_path, "2d", 128, 2, 6, 16)
    assert out == cut_plans(plans, PLANS, "2d", 128, 2, 6, 16)  # one owner of the cut
    written = tmp_path / f"{PLANS}.json"
    assert json.loads(written.read_text()) == out
    # the topology runs' cut (benchmarks/studies/topology_losses/results/topology_drive_cpu.md): 6 stages, half width
    assert out["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"] == [
        f // 2 for f in planned[:6]]
    before = written.stat().st_mtime_ns
    write_plans(tmp_path, "2d", 128, 2, 6, 16)
    assert written.stat().st_mtime_ns == before  # the same plans are not written again
    assert plans_description("2d", 128, 2, 6, 16) == ("nnUNetPlans 2d cut to patch 128^2, batch 2, 6 stages of "
                                                      "widths 16..256")


def test_finished_record_reads_the_first_done_unit_of_several_runs(tmp_path):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import finished_record
    from nnunet_tubeconv.evaluation.layout import RECORD_FILE, RECORD_SCHEMA

    rel = Path("runs/D/2d/arm/fold_0_seed_0")
    a, b, c = tmp_path / "results", tmp_path / "resultsp2", tmp_path / "resultsp3"
    for folder, status, tag in ((a, "failed", "a"), (b, "done", "b"), (c, "done", "c")):
        (folder / rel).mkdir(parents=True)
        (folder / rel / RECORD_FILE).write_text(json.dumps({"schema": RECORD_SCHEMA, "status": status, "tag": tag}))
    assert finished_record([a, b, c], rel)["tag"] == "b"  # a's unit failed: the next run's finished one counts
    assert finished_record(a, rel) is None
    assert finished_record([tmp_path / "none"], rel) is None


def test_paired_vs_base_pairs_cases_by_name_with_the_harness_statistics():
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import paired_vs_base

    base = {f"c{i}": {"dice": 0.70, "cldice": 0.60} for i in range(8)}
    arm = {f"c{i}": {"dice": 0.72 + 0.001 * i, "cldice": 0.60} for i in range(8)}
    arm["only_arm"] = {"dice": 0.0, "cldice": 0.0}  # a case the baseline lacks is not paired
    out = paired_vs_base(arm, base, ("dice", "cldice"))
    assert out["dice"]["cases"] == 8
    assert out["dice"]["mean_diff"] == pytest.approx(0.0235)
    low, high = out["dice"]["ci"]
    assert 0.02 <= low < 0.0235 < high <= 0.027
    assert out["dice"]["p_sign_flip"] == pytest.approx(2 / 2**8)  # all 8 of one sign: exact test's smallest p
    assert out["dice"]["p_holm"] == pytest.approx(2 * 2 / 2**8)  # Holm over the two metrics
    assert out["dice"]["verdict"].startswith("withheld")  # the harness withholds a verdict while a case is missing
    arm.pop("only_arm")
    assert paired_vs_base(arm, base, ("dice", "cldice"))["dice"]["verdict"] == "better"
    within = paired_vs_base(arm, base, ("dice",), noise={"dice": 0.03})["dice"]  # gain 0.0235 < floor 0.03
    assert within["verdict"] == "no evidence of a difference" and within["noise_floor"] == 0.03
    assert out["cldice"]["mean_diff"] == 0.0 and out["cldice"]["p_sign_flip"] == 1.0
    few = paired_vs_base({k: arm[k] for k in ("c0", "c1", "c2", "c3")}, base, ("dice",))["dice"]
    assert few["cases"] == 4 and few["ci"] is None and few["p_sign_flip"] is None  # < MIN_PAIRS: no test
    assert "at least 6" in few["note"]
    assert paired_vs_base({"x": {"dice": 1.0}}, base, ("dice",))["dice"]["cases"] == 0


def test_nnunet_work_env_makes_the_three_folders_and_hides_the_callers_nnunet_variables(tmp_path, monkeypatch):
    from nnunet_tubeconv.benchmarks.studies.snakes.drive import nnunet_work_env

    monkeypatch.setenv("nnUNet_results", "/somewhere/else")
    monkeypatch.setenv("nnUNet_compile", "true")
    env, log = nnunet_work_env(tmp_path / "w")
    assert log == tmp_path / "w" / "commands.log"
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert env[var] == str(tmp_path / "w" / var) and (tmp_path / "w" / var).is_dir()
    assert "nnUNet_compile" not in env  # none of the caller's own nnU-Net settings leak into the runs
    assert env["PATH"] == os.environ["PATH"]


def test_seed_noise_floors_pairs_each_other_seed_with_the_first_by_case():
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import seed_noise_floors

    s0 = {f"c{i}": {"dice": 0.70 + 0.01 * i} for i in range(6)}
    s1 = {f"c{i}": {"dice": 0.70 + 0.01 * i + (0.004 if i % 2 else 0.002)} for i in range(6)}
    s1["extra"] = {"dice": 0.1}  # a case seed 0 lacks is not paired
    out = seed_noise_floors({0: s0, 1: s1}, 0, ("dice",))
    f = out["1"]["dice"]
    assert f["cases"] == 6
    assert f["mean_diff"] == pytest.approx(0.003) and f["floor"] == pytest.approx(0.003)
    assert 0.002 <= f["floor_ci"][0] <= 0.003 <= f["floor_ci"][1] <= 0.004  # CI of |mean|, all diffs positive
    below = seed_noise_floors({0: s0, 1: {c: {"dice": v["dice"] - 0.01} for c, v in s0.items()}}, 0, ("dice",))
    assert below["1"]["dice"]["mean_diff"] == pytest.approx(-0.01)
    assert below["1"]["dice"]["floor"] == pytest.approx(0.01)
    assert seed_noise_floors({0: s0}, 0, ("dice",)) == {}  # one seed: no floor
    assert seed_noise_floors({1: s1, 2: s0}, 0, ("dice",)) == {}  # no first seed to pair with


@pytest.mark.parametrize("arm, emptied, kept",
                         [("decoder_only", "conv_block_encoder_stages", "conv_block_decoder_stages"),
                          ("encoder_only", "conv_block_decoder_stages", "conv_block_encoder_stages")])
def test_placement_arms_keep_the_default_snakes_on_one_side_only(arm, emptied, kept):
    from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry, variant_architecture

    entry = plain_conv_unet_entry(2, [16, 32, 64, 128, 256, 256], [[1, 1]] + [[2, 2]] * 5)
    swing = {k: v for k, v in ARMS[arm][1].items() if k != emptied}
    default = variant_architecture(entry, "dsconv", swing)["arch_kwargs"]["block_options"]
    placed = variant_architecture(entry, "dsconv", dict(ARMS[arm][1]))["arch_kwargs"]["block_options"]
    assert default[emptied] == [2] and placed[emptied] == []
    assert placed[kept] == default[kept] == [2]
    assert placed["snake_swing_norm"] == "none" and placed["snake_swing_lr_scale"] == 0.1


def test_baseline_must_be_one_of_the_arms_run(capsys):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import main

    with pytest.raises(SystemExit):
        main(["--arms", "no_norm_lr0.1", "decoder_only", "--baseline", "stage_norm", "--no-train"])
    assert "--baseline stage_norm is not one of the arms run (no_norm_lr0.1, decoder_only)" in capsys.readouterr().err


def test_negative_seeds_are_refused_with_what_is_allowed(capsys):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import main

    with pytest.raises(SystemExit):
        main(["--arms", "no_norm_lr0.1", "--seeds", "0", "-1", "--no-train"])
    assert "--seeds must be integers >= 0" in capsys.readouterr().err


def test_baseline_seeds_train_the_baseline_again_and_the_other_arms_once():
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import PLANS, suite_arms

    arms = suite_arms(["no_norm_lr0.1", "decoder_only"], [0], "no_norm_lr0.1", [1, 0])
    assert arms["no_norm_lr0.1"] == {"trainer": ARMS["no_norm_lr0.1"][0], "plans": PLANS, "seeds": [0, 1]}
    assert arms["decoder_only"]["seeds"] == [0]
    # without baseline seeds every arm, the baseline too, runs --seeds only (no second seed added unasked)
    assert {a["trainer"]: a["seeds"] for a in suite_arms(["stage_norm", "no_norm"], [2, 0], "stage_norm").values()} \
        == {ARMS["stage_norm"][0]: [0, 2], ARMS["no_norm"][0]: [0, 2]}


def test_baseline_seeds_must_include_the_seed_the_arms_are_paired_on(capsys):
    from nnunet_tubeconv.benchmarks.studies.snakes.ablation import main

    with pytest.raises(SystemExit):
        main(["--arms", "no_norm_lr0.1", "decoder_only", "--seeds", "0", "--baseline-seeds", "1", "2", "--no-train"])
    err = capsys.readouterr().err
    assert "--baseline-seeds must be integers >= 0 that include the first of --seeds (0" in err and "[1, 2]" in err
