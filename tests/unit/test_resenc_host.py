"""The ResEnc host outside the network itself: the ResEnc entry of a fixed plan, ``bench-train --host``, ``plan
--preset`` (errors, the presets' classes and plans names)."""

from __future__ import annotations

import json

import pytest

from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry
from nnunet_tubeconv.cli import main
from nnunet_tubeconv.planning.hosts import HOST_PRESETS, resenc_entry

RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"


def _plain3d(features=(4, 8, 16, 16, 16)) -> dict:
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]][:len(features)]
    return plain_conv_unet_entry(3, list(features), strides, [[1, 3, 3]] + [[3, 3, 3]] * (len(features) - 1))


def test_resenc_entry_is_what_nnunets_resenc_planner_writes():
    plain = _plain3d()
    e = resenc_entry(plain, "resenc-m")
    kw = e["arch_kwargs"]
    assert e["network_class_name"] == RESENC_CLASS
    # nnU-Net's ResEncUNetPlanner: (1, 3, 4, 6, 6, ...) residual blocks per encoder stage, 1 conv per decoder stage
    assert kw["n_blocks_per_stage"] == [1, 3, 4, 6, 6] and kw["n_conv_per_stage_decoder"] == [1, 1, 1, 1]
    assert "n_conv_per_stage" not in kw
    assert list(kw)[:6] == ["n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
                            "n_blocks_per_stage"]
    for k in ("features_per_stage", "kernel_sizes", "strides", "norm_op", "conv_bias"):
        assert kw[k] == plain["arch_kwargs"][k]
    assert "n_conv_per_stage" in plain["arch_kwargs"]  # the input is not modified
    assert resenc_entry(plain, "resenc-xl") == e  # same stages: M, L and XL differ only in patch and batch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    net = get_network_from_plans(e["network_class_name"], kw, e["_kw_requires_import"], 1, 3, deep_supervision=True)
    assert type(net).__name__ == "ResidualEncoderUNet"
    assert [len(s.blocks) for s in net.encoder.stages] == [1, 3, 4, 6, 6]
    with pytest.raises(ValueError, match="not a residual-encoder host"):
        resenc_entry(plain, "plain")
    with pytest.raises(ValueError, match="unknown host/preset"):
        resenc_entry(plain, "resenc-s")


def _bench(capsys, *extra: str) -> dict:
    """bench-train's JSON report (it sets torch's thread count: the tests that call this restore it)."""
    assert main(["bench-train", "--quick", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_train_resenc_host_vanilla_is_resenc(capsys, restore_torch_threads):
    plain = _bench(capsys, "--variants", "")
    res = _bench(capsys, "--variants", "", "--host", "resenc-m")
    assert res["host"] == "ResEnc M" and "ResEnc M encoder" in res["plan"] and plain["host"] == "plain U-Net"
    # ResEnc M's encoder has 1+3+4+6+6 residual blocks (2 convs each) against the plain 2 convs per stage
    assert res["results"][0]["params"] > 2 * plain["results"][0]["params"]
    assert res["results"][0]["memory_ratio"] == 1.0


def test_bench_train_host_errors(capsys, tmp_path):
    assert main(["bench-train", "--quick", "--host", "resenc-s"]) == 2
    assert "unknown host/preset 'resenc-s'" in capsys.readouterr().err
    plans = tmp_path / "p.json"
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {
        "patch_size": [8, 32, 32], "batch_size": 1, "architecture": _plain3d()}}}))
    assert main(["bench-train", "--quick", "--plans", str(plans), "--host", "resenc-m"]) == 2
    assert "leave --host out" in capsys.readouterr().err


def test_plan_command_refuses_unknown_preset(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    assert main(["plan", "-d", "1", "--variant", "dsconv", "--preset", "resenc-s"]) == 2
    err = capsys.readouterr().err
    assert "unknown --preset 'resenc-s'" in err and str(list(HOST_PRESETS)) in err
