"""``nnunet-tubeconv plan --preprocess`` on real data end to end: nnU-Net's fingerprint of a synthetic data set, the
dsconv plans with preprocessing, and networks built from the written JSON as nnU-Net's inference builds them. The
planning on fingerprints alone is tested in unit/test_planning.py."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import torch
from support.nnunet import nnunet_folders

from nnunet_tubeconv.cli import main


def test_synthetic_dataset_plan_preprocess_build_forward(tmp_path, monkeypatch, capsys, one_torch_thread):
    """Real data end to end: fingerprint -> dsconv plans (with preprocessing) -> networks from the written JSON."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_tubeconv.data.synthetic import write_synthetic_dataset
    from nnunet_tubeconv.trainers import nnUNetTrainerDSConv

    monkeypatch.setenv("nnUNet_n_proc_DA", "1")  # nnU-Net's own estimate sets torch threads from it
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    paths = nnunet_folders(tmp_path)
    for k, v in paths.items():
        monkeypatch.setenv(k, v)
    write_synthetic_dataset(paths["nnUNet_raw"], 951, 3, num_cases=2, shape=(24, 32, 32), seed=3, name="PlanTubes")
    with contextlib.redirect_stdout(io.StringIO()):
        extract_fingerprints([951], num_processes=1, show_progress_bar=False)
    assert main(["plan", "-d", "951", "--variant", "dsconv", "--gpu-memory", "8", "--preprocess"]) == 0
    out = capsys.readouterr().out
    assert "nnUNetv2_train 951 3d_fullres 0 -tr nnUNetTrainerDSConv -p nnUNetPlans_dsconv_8G" in out
    pre = tmp_path / "nnUNet_preprocessed" / "Dataset951_PlanTubes"
    pm = PlansManager(str(pre / "nnUNetPlans_dsconv_8G.json"))  # JSON round trip
    dataset_json = json.loads((pre / "dataset.json").read_text())
    for c in pm.available_configurations:
        cm = pm.get_configuration(c)
        assert (pre / cm.data_identifier).is_dir(), c  # --preprocess wrote what was missing
        patch = list(cm.patch_size)
        divisor = [int(np.prod([s[i] for s in cm.network_arch_init_kwargs["strides"]])) for i in range(len(patch))]
        assert all(p % d == 0 for p, d in zip(patch, divisor)), (c, patch, divisor)
        # trainer-style build from the plans alone, as nnU-Net's inference does
        net = nnUNetTrainerDSConv.build_network_architecture(pm, cm, 1, 2, True)
        same = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                      cm.network_arch_init_kwargs_req_import, 1, 2, allow_init=False,
                                      deep_supervision=True)
        assert type(net).__name__ == type(same).__name__ == "TubeUNet"
        assert net.state_dict().keys() == same.state_dict().keys()
        assert net.block_options["conv_block"] == "dsc"
        with torch.no_grad():
            out = net(torch.zeros(1, 1, *patch))
        assert tuple(out[0].shape) == (1, 2, *patch), c
    assert dataset_json["labels"] == {"background": 0, "vessel": 1}
