"""Skeleton Recall and soft clDice: loss values on constructed cases with known answers, gradients, the skeleton
transform on small patches (alone and inside nnU-Net's pipeline), and the trainers running nnU-Net's own
``train_step`` / ``validation_step`` on batches made by their own augmentation pipeline (labels, regions, ignore
label; 2D and 3D).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from support.nnunet import cpu_trainer
from support.plans import TINY_DATASET_JSON

from nnunet_tubeconv.losses import (
    ClDiceCompound,
    SkeletonRecallCompound,
    SkeletonTargetTransform,
    SoftClDiceLoss,
    SoftSkeletonRecallLoss,
    soft_skeleton,
    tubed_skeleton,
)
from nnunet_tubeconv.trainers.topology_losses import (
    ClDiceMixin,
    SkeletonRecallMixin,
    nnUNetTrainerClDice,
    nnUNetTrainerDSConvSkeletonRecall,
    nnUNetTrainerSkeletonRecall,
    nnUNetTrainerTubeConvSkeletonRecall,
)
from nnunet_tubeconv.trainers.tubeconv_variants import nnUNetTrainerScSE

torch.set_num_threads(1)
BIG = 30.0  # logit magnitude: softmax/sigmoid are 0/1 to ~1e-13


def _t_shape(dim: int) -> torch.Tensor:
    """A one-voxel-thick T: a 20-voxel bar and a disjoint 10-voxel stem. (*spatial) bool."""
    shape = (24, 24) if dim == 2 else (6, 24, 24)
    m = torch.zeros(shape, dtype=torch.bool)
    if dim == 2:
        m[5, 2:22] = True
        m[6:16, 11] = True
    else:
        m[3, 5, 2:22] = True
        m[3, 6:16, 11] = True
    return m


def _bar(dim: int) -> torch.Tensor:
    """The 20-voxel bar of the T alone."""
    m = torch.zeros_like(_t_shape(dim))
    if dim == 2:
        m[5, 2:22] = True
    else:
        m[3, 5, 2:22] = True
    return m


def _logits(fg: torch.Tensor, num_classes: int = 2, label: int = 1) -> torch.Tensor:
    """(1, C, *spatial) logits whose argmax is ``label`` on ``fg`` and background elsewhere, saturated."""
    out = torch.full((1, num_classes, *fg.shape), -BIG, dtype=torch.float64)
    out[0, 0] = torch.where(fg, -BIG, BIG)
    out[0, label] = torch.where(fg, BIG, -BIG)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Skeleton Recall loss


@pytest.mark.parametrize("dim", [2, 3])
def test_recall_perfect_prediction_is_zero_and_missing_branch_is_its_share(dim):
    t = _t_shape(dim)
    skel = t[None, None].to(torch.int16)  # label 1 on the skeleton
    loss = SoftSkeletonRecallLoss()
    assert float(loss(_logits(t), skel)) == pytest.approx(0.0, abs=1e-9)
    # the prediction has the bar (20 voxels) but misses the stem (10 of 30 skeleton voxels)
    assert float(loss(_logits(_bar(dim)), skel)) == pytest.approx(10 / 30, abs=1e-9)
    # nothing predicted: nothing recalled
    assert float(loss(_logits(torch.zeros_like(t)), skel)) == pytest.approx(1.0, abs=1e-9)


def test_recall_averages_classes_present_and_skips_absent_ones():
    t, bar = _t_shape(2), _bar(2)
    stem = t & ~bar
    skel = torch.zeros((1, 1, *t.shape), dtype=torch.int16)
    skel[0, 0][bar] = 1
    skel[0, 0][stem] = 2
    logits = torch.full((1, 4, *t.shape), -BIG, dtype=torch.float64)
    logits[0, 0] = BIG
    logits[0, 1][bar] = 2 * BIG  # class 1: all recalled
    logits[0, 2][stem[:, :]] = 2 * BIG
    logits[0, 2][6:11, 11] = -BIG  # class 2: 5 of its 10 voxels lost to background
    # class 3 has no skeleton voxel: not part of the mean
    assert float(SoftSkeletonRecallLoss()(logits, skel)) == pytest.approx(1 - (1 + 0.5) / 2, abs=1e-9)
    # a batch without any skeleton: 0, with a gradient graph
    empty = SoftSkeletonRecallLoss()(logits.requires_grad_(), torch.zeros_like(skel))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


@pytest.mark.parametrize("dim", [2, 3])
def test_recall_regions_use_sigmoid_per_channel(dim):
    t = _t_shape(dim)
    skel = torch.stack([t, _bar(dim)])[None]  # 2 regions
    logits = torch.zeros((1, 2, *t.shape), dtype=torch.float64)  # p = 0.5 everywhere
    assert float(SoftSkeletonRecallLoss(regions=True)(logits, skel)) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="one channel per output"):
        SoftSkeletonRecallLoss(regions=True)(logits, skel[:, :1])


@pytest.mark.parametrize("dim", [2, 3])
def test_recall_gradient_lives_on_the_skeleton_and_matches_finite_differences(dim):
    t = _t_shape(dim)
    skel = t[None, None].to(torch.int16)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((1, 2, *t.shape), generator=g, dtype=torch.float64, requires_grad=True)
    SoftSkeletonRecallLoss()(logits, skel).backward()
    grad = logits.grad[0]
    assert torch.all(grad[:, ~t] == 0)
    assert torch.all(grad[1, t] < 0)  # raising the vessel logit on the skeleton lowers the loss
    small = torch.randn((1, 2, *(5,) * dim), generator=g, dtype=torch.float64, requires_grad=True)
    small_skel = (torch.rand((1, 1, *(5,) * dim), generator=g) > 0.5).to(torch.int16)
    assert torch.autograd.gradcheck(lambda x: SoftSkeletonRecallLoss()(x, small_skel), (small,))


def test_recall_compound_splits_the_target_and_validation_targets_get_the_base_alone():
    t = _t_shape(2)
    seg = t[None, None].to(torch.int16)
    base = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {})
    comp = SkeletonRecallCompound(base, num_seg_channels=1, regions=False, weight=2.0)
    logits = _logits(_bar(2)).float()
    with_skel = torch.cat([seg, seg], 1)
    expected = float(base(logits, seg)) + 2.0 * (10 / 30)
    assert float(comp(logits, with_skel)) == pytest.approx(expected, abs=1e-5)
    assert float(comp(logits, seg)) == pytest.approx(float(base(logits, seg)), abs=1e-7)
    with pytest.raises(ValueError, match="skeleton channel"):
        comp(logits, torch.cat([seg, seg, seg], 1))


# ---------------------------------------------------------------------------------------------------------------
# soft skeleton and clDice


@pytest.mark.parametrize("dim", [2, 3])
def test_soft_skeleton_of_binary_shapes(dim):
    t = _t_shape(dim).double()[None, None]
    # a one-voxel-thick curve is its own skeleton
    assert torch.equal(soft_skeleton(t, 3), t)
    # a 3-voxel-wide bar (3x3 cross section in 3D) thins to its centre line, one voxel shorter at each end
    bar = torch.zeros((1, 1, *((9,) if dim == 3 else ()), 12, 30), dtype=torch.float64)
    if dim == 2:
        bar[0, 0, 4:7, 3:27] = 1
    else:
        bar[0, 0, 3:6, 4:7, 3:27] = 1
    expected = torch.zeros_like(bar)
    if dim == 2:
        expected[0, 0, 5, 4:26] = 1
    else:
        expected[0, 0, 4, 5, 4:26] = 1
    assert torch.equal(soft_skeleton(bar, 3), expected)
    with pytest.raises(ValueError, match=">= 0"):
        soft_skeleton(bar, -1)


@pytest.mark.parametrize("dim", [2, 3])
def test_cldice_perfect_is_zero_and_missing_branch_gives_known_sensitivity(dim):
    t = _t_shape(dim)
    target = t[None, None].to(torch.int16)
    loss = SoftClDiceLoss(iterations=3)
    assert float(loss(_logits(t), target)) == pytest.approx(0.0, abs=1e-9)
    # prediction = the bar: precision (20 + 1) / (20 + 1) = 1, sensitivity (20 + 1) / (30 + 1)
    tsens = 21 / 31
    assert float(loss(_logits(_bar(dim)), target)) == pytest.approx(1 - 2 * tsens / (1 + tsens), abs=1e-9)
    regions = SoftClDiceLoss(iterations=3, regions=True)
    assert float(regions(_logits(_bar(dim))[:, 1:], t[None, None])) == pytest.approx(1 - 2 * tsens / (1 + tsens),
                                                                                       abs=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_cldice_gradient_matches_finite_differences(dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((1, 3, *(6,) * dim), generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (1, 1, *(6,) * dim), generator=g)
    assert torch.autograd.gradcheck(lambda v: SoftClDiceLoss(2)(v, y), (x,))
    comp = ClDiceCompound(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}),
                          regions=False, iterations=2, weight=0.5)
    xf = x.detach().float()
    base = comp.base(xf, y)
    assert float(comp(xf, y)) == pytest.approx(float(base) + 0.5 * float(SoftClDiceLoss(2)(xf, y)), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# tubed skeleton targets


def test_tubed_skeleton_2d_known_answers():
    m = np.zeros((20, 30), bool)
    m[8:13, 3:27] = True  # a 5-wide bar
    m[16, 2:28] = True  # a 1-wide line
    tube = tubed_skeleton(m, 1)
    assert not (tube & ~m).any()  # clipped to the mask
    assert tube[16, 2:28].all()  # a thin line is its own tubed skeleton
    assert tube[9:12, 8:22].all() and not tube[8, 8:22].any() and not tube[12, 8:22].any()  # centre +- 1 row
    bare = tubed_skeleton(m, 0)
    assert bare[10, 8:22].all() and not bare[9, 8:22].any()
    assert not tubed_skeleton(np.zeros((5, 5), bool)).any()
    with pytest.raises(ValueError, match="2D or 3D"):
        tubed_skeleton(np.ones(5, bool))


def test_tubed_skeleton_3d_tube_has_its_centre_line():
    _, y, x = np.mgrid[:20, :15, :15]
    m = (y - 7) ** 2 + (x - 7) ** 2 <= 6.5  # a cylinder of radius ~2.5 along z
    tube = tubed_skeleton(m, 1)
    assert not (tube & ~m).any()
    assert tube[3:17, 7, 7].all()
    assert tube.sum() < m.sum() / 2


def test_transform_label_and_region_layouts():
    seg = np.zeros((1, 20, 30), np.int16)
    seg[0, 8:13, 3:27] = 1
    seg[0, 16, 2:28] = 2
    seg[0, 0, :] = 3  # an ignore label: not in `labels`, never skeletonised
    out = SkeletonTargetTransform(labels=[1, 2])(segmentation=torch.from_numpy(seg))["segmentation"]
    assert out.shape == (2, 20, 30) and out.dtype == torch.int16
    assert torch.equal(out[0], torch.from_numpy(seg[0]))
    skel = out[1].numpy()
    assert set(np.unique(skel)) == {0, 1, 2}
    assert np.array_equal(skel == 1, tubed_skeleton(seg[0] == 1)) and (skel[16, 2:28] == 2).all()
    regions = torch.from_numpy(np.stack([seg[0] > 0, seg[0] == 2, seg[0] == 3]))  # 2 regions + ignore channel
    out = SkeletonTargetTransform(num_regions=2)(segmentation=regions)["segmentation"]
    assert out.shape == (5, 20, 30) and out.dtype == torch.bool  # regions, ignore, one skeleton per region
    assert torch.equal(out[:3], regions)
    assert np.array_equal(out[4].numpy(), tubed_skeleton(seg[0] == 2))
    with pytest.raises(ValueError, match="exactly one of"):
        SkeletonTargetTransform()
    with pytest.raises(ValueError, match="foreground labels"):
        SkeletonTargetTransform(labels=[0, 1])


# ---------------------------------------------------------------------------------------------------------------
# trainers: nnU-Net's own train_step / validation_step on batches from the trainer's own pipelines

REGIONS_JSON = {
    "channel_names": {"0": "synthetic"},
    "labels": {"background": 0, "vessel": [1, 2], "core": 2},
    "regions_class_order": [1, 2],
    "numTraining": 5,
    "file_ending": ".nii.gz",
}
IGNORE_JSON = {**TINY_DATASET_JSON, "labels": {"background": 0, "vessel": 1, "ignore": 2}}


def _trainer(cls, tmp_path, monkeypatch, dataset_json=TINY_DATASET_JSON, configuration="2d"):
    torch.manual_seed(0)
    tr = cpu_trainer(cls, tmp_path, monkeypatch, configuration, dataset_json)
    tr.initialize()
    return tr


def _batch(tr, train: bool = True, seed: int = 0) -> dict:
    """What nnUNetDataLoader returns: every sample through the trainer's pipeline, stacked."""
    lm = tr.label_manager
    rot, dummy_2d, initial, mirror = tr.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    regions = lm.foreground_regions if lm.has_regions else None
    scales = tr._get_deep_supervision_scales()
    if train:
        pipeline = tr.get_training_transforms(tr.configuration_manager.patch_size, rot, scales, mirror, dummy_2d,
                                              use_mask_for_norm=[False], is_cascaded=False,
                                              foreground_labels=lm.foreground_labels, regions=regions,
                                              ignore_label=lm.ignore_label)
        size = [int(s) for s in initial]
    else:
        pipeline = tr.get_validation_transforms(scales, is_cascaded=False, foreground_labels=lm.foreground_labels,
                                                regions=regions, ignore_label=lm.ignore_label)
        size = list(tr.configuration_manager.patch_size)
    g = np.random.default_rng(seed)
    samples = []
    for _ in range(tr.batch_size):
        seg = np.zeros((1, *size), np.int16)
        centre = [s // 2 for s in size]
        seg[(0, *[slice(c - 1, c + 2) for c in centre[:-1]], slice(1, size[-1] - 1))] = 1  # a 3-wide vessel
        if max(lm.all_labels) >= 2:
            seg[(0, *[slice(c, c + 1) for c in centre[:-1]], slice(2, size[-1] - 2))] = 2
        if lm.has_ignore_label:
            seg[(0, *[slice(0, 2)] * (len(size) - 1), slice(None))] = lm.ignore_label
        img = (seg > 0).astype(np.float32) + 0.1 * g.standard_normal((1, *size)).astype(np.float32)
        samples.append(pipeline(image=torch.from_numpy(img), segmentation=torch.from_numpy(seg)))
    data = torch.stack([s["image"] for s in samples])
    segs = samples[0]["segmentation"]
    target = ([torch.stack([s["segmentation"][i] for s in samples]) for i in range(len(segs))]
              if isinstance(segs, list) else torch.stack([s["segmentation"] for s in samples]))
    return {"data": data, "target": target, "keys": [f"case_{i}" for i in range(len(samples))]}


def _weights_and_losses(tr):
    assert isinstance(tr.loss, DeepSupervisionWrapper)
    return tr.loss.weight_factors, tr.loss.loss


@pytest.mark.parametrize("cls", [nnUNetTrainerSkeletonRecall, nnUNetTrainerDSConvSkeletonRecall,
                                 nnUNetTrainerTubeConvSkeletonRecall])
def test_skeleton_recall_trainers_train_on_their_own_batches(cls, tmp_path, monkeypatch):
    tr = _trainer(cls, tmp_path, monkeypatch)
    weights, comp = _weights_and_losses(tr)
    assert isinstance(comp, SkeletonRecallCompound) and isinstance(comp.base, DC_and_CE_loss)
    assert comp.weight == 1.0
    batch = _batch(tr)
    # the skeleton travels as channel 1 of every deep-supervision target, downsampled with the segmentation
    assert all(t.shape[1] == 2 for t in batch["target"])
    full = batch["target"][0]
    assert ((full[:, 1] > 0) <= (full[:, 0] > 0)).all() and (full[:, 1] > 0).any()
    # the loss is nnU-Net's plus the recall term, output by output
    with torch.no_grad():
        out = tr.network(batch["data"])
        total = float(tr.loss(out, batch["target"]))
        parts = sum(w * (float(comp.base(o, t[:, :1])) + float(comp.recall(o, t[:, 1:])))
                    for w, o, t in zip(weights, out, batch["target"]) if w)
    assert total == pytest.approx(parts, rel=1e-5)
    before = [p.detach().clone() for p in tr.network.parameters()]
    for i in range(2):
        assert np.isfinite(tr.train_step(_batch(tr, seed=i))["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.network.parameters()))
    # validation batches carry no skeleton: nnU-Net's validation_step runs with the base loss
    val = tr.validation_step(_batch(tr, train=False))
    assert np.isfinite(val["loss"]) and val["tp_hard"].shape == (1,)


def test_skeleton_recall_3d_and_weight_option(tmp_path, monkeypatch):
    class nnUNetTrainerSkeletonRecallW3(nnUNetTrainerSkeletonRecall):
        skeleton_recall_weight = 3.0

    tr = _trainer(nnUNetTrainerSkeletonRecallW3, tmp_path, monkeypatch, configuration="3d_fullres")
    assert tr.loss.loss.weight == 3.0
    batch = _batch(tr)
    assert batch["target"][0].shape[1:] == (2, 16, 16, 16)
    assert np.isfinite(tr.train_step(batch)["loss"])


def test_skeleton_recall_regions_and_ignore_label(tmp_path, monkeypatch):
    tr = _trainer(nnUNetTrainerSkeletonRecall, tmp_path / "r", monkeypatch, dataset_json=REGIONS_JSON)
    comp = tr.loss.loss
    assert isinstance(comp.base, DC_and_BCE_loss) and comp.recall.regions and comp.num_seg_channels == 2
    batch = _batch(tr)
    assert batch["target"][0].shape[1] == 4  # 2 regions + 2 skeletons
    assert np.isfinite(tr.train_step(batch)["loss"])
    assert np.isfinite(tr.validation_step(_batch(tr, train=False))["loss"])

    tr = _trainer(nnUNetTrainerSkeletonRecall, tmp_path / "i", monkeypatch, dataset_json=IGNORE_JSON)
    batch = _batch(tr)
    skel = batch["target"][0][:, 1]
    assert set(torch.unique(skel).tolist()) == {0, 1}  # the ignore label is never skeletonised
    assert np.isfinite(tr.train_step(batch)["loss"])
    assert np.isfinite(tr.validation_step(_batch(tr, train=False))["loss"])

    regions_ignore = {**REGIONS_JSON, "labels": {**REGIONS_JSON["labels"], "ignore": 3}}
    tr = _trainer(nnUNetTrainerSkeletonRecall, tmp_path / "ri", monkeypatch, dataset_json=regions_ignore)
    batch = _batch(tr)
    assert batch["target"][0].shape[1] == 5 and tr.loss.loss.num_seg_channels == 3  # regions, ignore, skeletons
    assert np.isfinite(tr.train_step(batch)["loss"])


def test_cldice_trainer_2d_3d_regions_and_refuses_ignore_label(tmp_path, monkeypatch):
    for configuration in ("2d", "3d_fullres"):
        tr = _trainer(nnUNetTrainerClDice, tmp_path / configuration, monkeypatch, configuration=configuration)
        comp = tr.loss.loss
        assert isinstance(comp, ClDiceCompound) and comp.cldice.iterations == 3 and comp.weight == 1.0
        batch = _batch(tr)
        assert batch["target"][0].shape[1] == 1  # no skeleton channel: clDice skeletonises on the fly
        assert np.isfinite(tr.train_step(batch)["loss"])
    tr = _trainer(nnUNetTrainerClDice, tmp_path / "r", monkeypatch, dataset_json=REGIONS_JSON)
    assert tr.loss.loss.cldice.regions
    assert np.isfinite(tr.train_step(_batch(tr))["loss"])
    with pytest.raises(ValueError, match="ignore label"):
        _trainer(nnUNetTrainerClDice, tmp_path / "i", monkeypatch, dataset_json=IGNORE_JSON)


def test_a_users_two_line_combination(tmp_path, monkeypatch):
    class nnUNetTrainerScSEClDice(ClDiceMixin, nnUNetTrainerScSE):
        cldice_iterations = 5

    class nnUNetTrainerScSESkeletonRecall(SkeletonRecallMixin, nnUNetTrainerScSE):
        pass

    for cls, compound in ((nnUNetTrainerScSEClDice, ClDiceCompound),
                          (nnUNetTrainerScSESkeletonRecall, SkeletonRecallCompound)):
        tr = _trainer(cls, tmp_path / cls.__name__, monkeypatch)
        assert tr.configuration_manager.network_arch_init_kwargs["block_options"]["scse_encoder_stages"]
        assert isinstance(tr.loss.loss, compound)
        assert np.isfinite(tr.train_step(_batch(tr))["loss"])
    assert tr.loss.loss.base.__class__ is DC_and_CE_loss


def test_loss_trainers_keep_nnunets_init_signature():
    import inspect

    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]

    ref = params(nnUNetTrainer.__init__)
    for cls in (nnUNetTrainerSkeletonRecall, nnUNetTrainerClDice, nnUNetTrainerDSConvSkeletonRecall,
                nnUNetTrainerTubeConvSkeletonRecall):
        assert params(cls.__init__) == ref
