"""Plans conversion (``variant_architecture``) and the plain path of ``TubeUNet`` against nnU-Net's PlainConvUNet.

The per-variant network contract is tested in tests/test_arch_contract.py.
"""

import copy
import json

import pytest
import torch
from dynamic_network_architectures.architectures.abstract_arch import test_submodules_loadable as submodules_loadable
from nnunet_tubeconv.architectures import (
    DEFAULT_BLOCK_OPTIONS,
    TUBE_UNET_CLASS,
    VARIANTS,
    allowed_options,
    variant_architecture,
)
from nnunet_tubeconv.architectures.memory import SavedTensors
from nnunet_tubeconv.architectures.unet import TubeUNet
from nnunet_tubeconv.architectures.variants import plain_conv_unet_entry, resenc_unet_entry
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from torch import nn

torch.set_num_threads(1)

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def plans_entry(dim: int, n_stages: int, features: list[int], kernels: list, strides: list, n_dec: int = 2,
                **extra) -> dict:
    """A configuration's architecture entry as nnU-Net's default planner writes it (JSON form)."""
    assert len(features) == n_stages
    return plain_conv_unet_entry(dim, features, strides, kernels, n_conv_per_stage_decoder=n_dec, **extra)


def aniso_3d() -> tuple[dict, list[int]]:
    """6 stages, [1,3,3] kernels and [1,2,2] strides in the first stages, as for thick-slice CT/MR."""
    entry = plans_entry(3, 6, [2, 4, 6, 8, 8, 8],
                        [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                        [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]])
    return entry, [8, 64, 64]


def iso_2d() -> tuple[dict, list[int]]:
    """7 stages, as the planner makes for 2D configurations."""
    entry = plans_entry(2, 7, [2, 4, 6, 8, 8, 8, 8], [[3, 3]] * 7, [[1, 1]] + [[2, 2]] * 6)
    return entry, [128, 128]


def aniso_3d_resenc() -> tuple[dict, list[int]]:
    """``aniso_3d``'s stages as a ResidualEncoderUNet entry (ResEnc planner's form), 1-2 blocks per stage."""
    entry, patch = aniso_3d()
    kw = entry["arch_kwargs"]
    return resenc_unet_entry(3, kw["features_per_stage"], kw["strides"], kw["kernel_sizes"],
                             n_blocks_per_stage=[1, 2, 2, 2, 2, 2]), patch


def iso_2d_resenc() -> tuple[dict, list[int]]:
    """``iso_2d``'s stages as a ResidualEncoderUNet entry, 1-2 blocks per stage."""
    entry, patch = iso_2d()
    kw = entry["arch_kwargs"]
    return resenc_unet_entry(2, kw["features_per_stage"], kw["strides"], kw["kernel_sizes"],
                             n_blocks_per_stage=[1, 2, 2, 2, 2, 2, 2]), patch


#: the test plans per host: nnU-Net's network class -> (3D plan, 2D plan)
PLANS_BY_HOST = {"plain": (aniso_3d, iso_2d), "resenc": (aniso_3d_resenc, iso_2d_resenc)}


def build(entry: dict, in_ch: int = 1, out_ch: int = 3, ds: bool = True, init: bool = True) -> nn.Module:
    return get_network_from_plans(entry["network_class_name"], entry["arch_kwargs"], entry["_kw_requires_import"],
                                  in_ch, out_ch, allow_init=init, deep_supervision=ds)


def neutral(entry: dict) -> dict:
    """Our entry with no block at all."""
    return variant_architecture(entry, "scse", {"scse_encoder_stages": [], "scse_decoder_stages": "none"})


# ---------------------------------------------------------------------------------------------- variant_architecture


def test_variants_registry_names():
    assert set(VARIANTS) == {"dsconv", "dlkdff", "scse", "deform", "tubeconv"}
    for v in VARIANTS.values():
        assert set(v["options"]) <= set(DEFAULT_BLOCK_OPTIONS)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_entry_is_new_explicit_and_json_safe(variant):
    entry, _ = aniso_3d()
    original = copy.deepcopy(entry)
    out = variant_architecture(entry, variant)
    assert entry == original  # input untouched
    assert out["network_class_name"] == TUBE_UNET_CLASS
    opts = out["arch_kwargs"]["block_options"]
    assert set(opts) == set(DEFAULT_BLOCK_OPTIONS)
    for key in ("conv_block_encoder_stages", "dlk_encoder_stages", "scse_encoder_stages", "conv_block_decoder_stages",
                "dff_skips", "scse_decoder_stages"):
        assert isinstance(opts[key], list) and all(isinstance(i, int) for i in opts[key])
    # plans kwargs carried over unchanged
    assert {k: v for k, v in out["arch_kwargs"].items() if k != "block_options"} == entry["arch_kwargs"]
    assert json.loads(json.dumps(out)) == out
    # the output owns its data
    out["arch_kwargs"]["features_per_stage"][0] = 999
    assert entry["arch_kwargs"]["features_per_stage"][0] == 2


def test_variant_defaults_resolved_against_plan():
    entry, _ = aniso_3d()  # 6 stages, 5 skips
    d = variant_architecture(entry, "dlkdff")["arch_kwargs"]["block_options"]
    assert d["dlk_encoder_stages"] == [2, 3, 4, 5]
    assert d["dff_skips"] == [0, 1, 2, 3, 4]
    s = variant_architecture(entry, "scse")["arch_kwargs"]["block_options"]
    assert s["scse_encoder_stages"] == list(range(6)) and s["scse_decoder_stages"] == list(range(5))
    t = variant_architecture(entry, "tubeconv")["arch_kwargs"]["block_options"]
    assert t["conv_block"] == "dsc" and t["dff_skips"] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variant_defaults_fit_a_tiny_plan(variant):
    """A 3-stage plan has no decoder stage 2: defaults fall back to the deepest valid stage, blocks stay."""
    entry = plans_entry(2, 3, [2, 4, 4], [[3, 3]] * 3, [[1, 1], [2, 2], [2, 2]])
    opts = variant_architecture(entry, variant)["arch_kwargs"]["block_options"]
    if opts["conv_block"] != "conv":
        assert opts["conv_block_encoder_stages"] == [2] and opts["conv_block_decoder_stages"] == [1]
    if variant == "dlkdff":
        assert opts["dlk_encoder_stages"] == [2] and opts["dff_skips"] == [0, 1]
    net = build(variant_architecture(entry, variant), 1, 2)
    assert len(net(torch.randn(1, 1, 16, 16))) == 2
    # indices given explicitly are never adjusted
    with pytest.raises(ValueError, match="out of range"):
        variant_architecture(entry, variant, {"scse_decoder_stages": [2]})


def test_options_override_and_selectors():
    entry, _ = aniso_3d()
    out = variant_architecture(entry, "dsconv", {"conv_block_encoder_stages": [-1, 0, 0], "snake_kernel_size": 5,
                                                 "conv_block_decoder_stages": "1:3"})
    o = out["arch_kwargs"]["block_options"]
    assert o["conv_block_encoder_stages"] == [0, 5]
    assert o["conv_block_decoder_stages"] == [1, 2]
    assert o["snake_kernel_size"] == 5


def test_entry_of_our_class_is_deep_copied_and_merged():
    entry, _ = aniso_3d()
    ours = variant_architecture(entry, "scse")
    again = variant_architecture(ours, "dsconv")  # the entry already describes the network: no variant defaults
    assert again == ours and again is not ours
    again["arch_kwargs"]["block_options"]["scse_reduction"] = 7
    assert ours["arch_kwargs"]["block_options"]["scse_reduction"] == 2
    merged = variant_architecture(ours, "scse", {"scse_mode": "max", "scse_decoder_stages": [0]})
    assert merged["arch_kwargs"]["block_options"]["scse_mode"] == "max"
    assert merged["arch_kwargs"]["block_options"]["scse_decoder_stages"] == [0]
    assert merged["arch_kwargs"]["block_options"]["scse_encoder_stages"] == list(range(6))
    assert ours["arch_kwargs"]["block_options"]["scse_mode"] == "add"


def test_unknown_variant_lists_valid_ones():
    entry, _ = aniso_3d()
    with pytest.raises(ValueError, match="dsconv") as e:
        variant_architecture(entry, "snake")
    assert "tubeconv" in str(e.value)


def test_unknown_option_lists_allowed_ones():
    entry, _ = aniso_3d()
    with pytest.raises(ValueError, match="snake_kernel") as e:
        variant_architecture(entry, "dsconv", {"kernel": 9})
    assert "'kernel'" in str(e.value)
    assert all(name in str(e.value) for name in allowed_options())


def test_other_network_class_is_refused():
    entry, _ = aniso_3d()
    entry["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualUNet"
    with pytest.raises(ValueError, match="'dynamic_network_architectures.architectures.unet.ResidualUNet'") as e:
        variant_architecture(entry, "scse")
    assert "PlainConvUNet" in str(e.value) and "ResidualEncoderUNet" in str(e.value)
    assert "nnUNetPlannerResEncM" in str(e.value)
    with pytest.raises(ValueError, match="network_class_name"):
        variant_architecture({"arch_kwargs": {}}, "scse")


@pytest.mark.parametrize("options, match", [
    ({"snake_kernel_size": 8}, "odd"),
    ({"snake_kernel_size": 1}, "snake_kernel_size"),
    ({"conv_block_encoder_stages": [6]}, "out of range"),
    ({"conv_block_decoder_stages": [5]}, "out of range"),
    ({"conv_block_encoder_stages": "some"}, "slice"),
    ({"conv_block_encoder_stages": [1.5]}, "integers"),
    ({"conv_block": "conv"}, "conv_block"),
    ({"conv_block": "snake"}, "conv_block"),
    ({"conv_block_convs": 3}, "only 2"),
    ({"snake_extend_scope": 0}, "positive"),
    ({"dlk_mode": "2024"}, "paper"),
    ({"scse_mode": "mul"}, "add"),
    ({"scse_reduction": 0}, "scse_reduction"),
    ({"dlk_blocks_per_stage": True}, "dlk_blocks_per_stage"),
])
def test_bad_option_values(options, match):
    entry, _ = aniso_3d()
    with pytest.raises(ValueError, match=match):
        variant_architecture(entry, "dsconv", options)


def test_bad_options_in_hand_written_plans_raise_at_build():
    entry, _ = aniso_3d()
    ours = neutral(entry)
    ours["arch_kwargs"]["block_options"] = {"scse_encoder_stages": [0], "oops": 1}
    with pytest.raises(ValueError, match="oops"):
        build(ours)


# ------------------------------------------------------------------------------------- plain path == PlainConvUNet


@pytest.mark.parametrize("plan", [aniso_3d, iso_2d])
def test_neutral_network_is_plain_conv_unet(plan):
    entry, patch = plan()
    ours = neutral(entry)
    for ds in (True, False):
        torch.manual_seed(0)
        vanilla = build(entry, 2, 3, ds)
        net = build(ours, 2, 3, ds)
        assert type(net) is TubeUNet
        sv, so = vanilla.state_dict(), net.state_dict()
        assert list(sv) == list(so)
        assert all(sv[k].shape == so[k].shape for k in sv)
        assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in vanilla.parameters())
        submodules_loadable(net)
        net.load_state_dict(sv, strict=True)
        x = torch.randn(1, 2, *patch)
        out_v, out_n = vanilla(x), net(x)
        if ds:
            assert isinstance(out_n, list) and len(out_n) == len(out_v) == entry["arch_kwargs"]["n_stages"] - 1
            for a, b in zip(out_v, out_n):
                torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(out_v, out_n)


@pytest.mark.parametrize("plan", [aniso_3d, iso_2d])
@pytest.mark.parametrize("ds", [True, False])
def test_plain_feature_map_size_matches_saved_tensors(plan, ds):
    entry, patch = plan()
    net = build(neutral(entry), 2, 3, ds).train()
    x = torch.randn(2, 2, *patch)
    with SavedTensors(exclude=net.parameters()) as rec:
        out = net(x)
        for o in out if isinstance(out, list) else [out]:
            rec.add(o)
    estimate = net.compute_conv_feature_map_size(patch)
    measured = rec.elements / 2
    assert abs(estimate - measured) / measured < 0.001, (estimate, measured)  # measured: 0.03-0.07%
    # ours counts what is really kept; dynamic_network_architectures counts one tensor per conv
    vanilla = build(entry, 2, 3, ds, init=False)
    assert estimate > 1.5 * vanilla.compute_conv_feature_map_size(patch)


@pytest.mark.parametrize("extra", [
    {"dropout_op": "torch.nn.Dropout", "dropout_op_kwargs": {"p": 0.2}},
    {"dropout_op": "torch.nn.Dropout3d", "dropout_op_kwargs": {"p": 0.2}},
    {"nonlin_kwargs": {"inplace": False}},
    {"nonlin": "torch.nn.ReLU", "nonlin_kwargs": {"inplace": True}, "norm_op": None},
    {"nonlin_first": True},
])
def test_plain_feature_map_size_other_layer_settings(extra):
    entry = plans_entry(3, 4, [2, 4, 4, 4], [[1, 3, 3]] + [[3, 3, 3]] * 3, [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                        **extra)
    net = build(neutral(entry), 1, 2, True).train()
    x = torch.randn(1, 1, 8, 32, 32)
    with SavedTensors(exclude=net.parameters()) as rec:
        for o in net(x):
            rec.add(o)
    estimate = net.compute_conv_feature_map_size([8, 32, 32])
    assert abs(estimate - rec.elements) / rec.elements < 0.001, (estimate, rec.elements)  # measured: 0-0.07%


def test_bad_network_arguments_raise_value_error():
    entry, _ = aniso_3d()
    kw = copy.deepcopy(entry["arch_kwargs"])
    kw.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU)
    TubeUNet(input_channels=1, num_classes=2, **kw)  # valid
    with pytest.raises(ValueError, match="kernel_sizes"):
        TubeUNet(input_channels=1, num_classes=2, **{**kw, "kernel_sizes": [[3, 3, 3]] * 5})
    with pytest.raises(ValueError, match="get_network_from_plans"):
        TubeUNet(input_channels=1, num_classes=2, **{**kw, "conv_op": "torch.nn.modules.conv.Conv3d"})
    with pytest.raises(ValueError, match="n_conv_per_stage_decoder"):
        TubeUNet(input_channels=1, num_classes=2, **{**kw, "n_conv_per_stage_decoder": [2] * 6})
    with pytest.raises(ValueError, match="num_classes"):
        TubeUNet(input_channels=1, num_classes=0, **kw)
    net = TubeUNet(input_channels=1, num_classes=2, **kw)
    with pytest.raises(ValueError, match="spatial"):
        net.compute_conv_feature_map_size([1, 8, 64, 64])


def test_initialize_keeps_marked_convs():
    entry, _ = aniso_3d()
    net = build(neutral(entry), init=False)
    keep = net.encoder.stages[0][0].convs[0].conv
    other = net.encoder.stages[0][0].convs[1].conv
    keep._tubeconv_keep_init = True
    with torch.no_grad():
        keep.weight.zero_()
        other.weight.zero_()
    net.apply(net.initialize)
    assert keep.weight.abs().sum() == 0
    assert other.weight.abs().sum() > 0
    # He init with nnU-Net's negative slope: std = sqrt(2 / (1 + 0.01^2) / fan_in)
    w = net.encoder.stages[3][0].convs[1].conv.weight
    expected = (2 / (1 + 1e-4) / w[0].numel()) ** 0.5
    assert abs(w.std().item() - expected) / expected < 0.1


def test_class_paths_name_the_classes_nnunet_builds():
    """The class paths in plans are what nnunetv2 imports: each must resolve to the network class it names."""
    import pydoc

    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_tubeconv.architectures import PLAIN_CONV_UNET_CLASS, PLAIN_CONV_UNET_NAMES, TUBE_UNET_CLASS
    from nnunet_tubeconv.architectures.unet import TubeUNet

    assert pydoc.locate(TUBE_UNET_CLASS) is TubeUNet
    assert pydoc.locate(PLAIN_CONV_UNET_CLASS) is PlainConvUNet
    assert PLAIN_CONV_UNET_NAMES == (PLAIN_CONV_UNET_CLASS, PlainConvUNet.__name__)


# ---------------------------------------------------------------------------- ResEnc host == ResidualEncoderUNet


def _resenc_neutral(entry: dict) -> dict:
    from nnunet_tubeconv.architectures import neutral_architecture

    return neutral_architecture(entry)


def _param_modules(net: nn.Module) -> list[tuple[str, str]]:
    """(name, type) of every module that owns parameters itself: the module tree as checkpoints see it."""
    return [(n, type(m).__name__) for n, m in net.named_modules() if any(True for _ in m.parameters(recurse=False))]


@pytest.mark.parametrize("plan", [aniso_3d_resenc, iso_2d_resenc])
def test_neutral_resenc_network_is_residual_encoder_unet(plan):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnunet_tubeconv.architectures import TUBE_RESENC_UNET_CLASS
    from nnunet_tubeconv.architectures.unet import TubeResEncUNet

    entry, patch = plan()
    ours = _resenc_neutral(entry)
    assert ours["network_class_name"] == TUBE_RESENC_UNET_CLASS
    for ds in (True, False):
        torch.manual_seed(0)
        vanilla = build(entry, 2, 3, ds)
        torch.manual_seed(0)
        net = build(ours, 2, 3, ds)
        assert type(vanilla) is ResidualEncoderUNet and type(net) is TubeResEncUNet
        sv, so = vanilla.state_dict(), net.state_dict()
        assert list(sv) == list(so)
        assert all(sv[k].shape == so[k].shape for k in sv)
        assert _param_modules(net) == _param_modules(vanilla)
        assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in vanilla.parameters())
        assert (net.key_to_encoder, net.key_to_stem, net.keys_to_in_proj) == (
            vanilla.key_to_encoder, vanilla.key_to_stem, vanilla.keys_to_in_proj)
        submodules_loadable(net)
        # same initialisation, zeroed last norms of the residual branches included (same seed, same order)
        for k in sv:
            torch.testing.assert_close(sv[k], so[k])
        assert all(b.conv2.norm.weight.abs().sum() == 0 for st in net.encoder.stages for b in st.blocks)
        x = torch.randn(1, 2, *patch)
        with torch.no_grad():  # perturb so that every weight matters, then load nnU-Net's weights strictly
            for p in vanilla.parameters():
                p.add_(0.1 * torch.randn_like(p))
        net.load_state_dict(vanilla.state_dict(), strict=True)
        out_v, out_n = vanilla(x), net(x)
        if ds:
            assert isinstance(out_n, list) and len(out_n) == len(out_v) == entry["arch_kwargs"]["n_stages"] - 1
            for a, b in zip(out_v, out_n):
                torch.testing.assert_close(a, b)
        else:
            torch.testing.assert_close(out_v, out_n)


@pytest.mark.parametrize("plan", [aniso_3d_resenc, iso_2d_resenc])
@pytest.mark.parametrize("ds", [True, False])
def test_resenc_feature_map_size_matches_saved_tensors(plan, ds):
    entry, patch = plan()
    net = build(_resenc_neutral(entry), 2, 3, ds).train()
    x = torch.randn(2, 2, *patch)
    with SavedTensors(exclude=net.parameters()) as rec:
        out = net(x)
        for o in out if isinstance(out, list) else [out]:
            rec.add(o)
    estimate = net.compute_conv_feature_map_size(patch)
    measured = rec.elements / 2
    assert abs(estimate - measured) / measured < 0.001, (estimate, measured)  # measured: 0.04-0.09%
    vanilla = build(entry, 2, 3, ds, init=False)
    assert estimate > 1.5 * vanilla.compute_conv_feature_map_size(patch)


@pytest.mark.parametrize("extra, options", [
    ({"dropout_op": "torch.nn.Dropout", "dropout_op_kwargs": {"p": 0.2}}, {"conv_block": "dsc",
                                                                           "conv_block_encoder_stages": [1]}),
    ({"dropout_op": "torch.nn.Dropout3d", "dropout_op_kwargs": {"p": 0.2}}, None),
    ({"nonlin_kwargs": {"inplace": False}}, {"conv_block": "dsc", "conv_block_encoder_stages": [0, 1],
                                             "conv_block_convs": 2}),
    ({}, {"conv_block": "deform", "conv_block_encoder_stages": [1, 2], "conv_block_convs": 3,
          "dlk_encoder_stages": [0], "scse_encoder_stages": [1, 3]}),
])
def test_resenc_feature_map_size_other_settings(extra, options):
    """Dropout in conv1, non-in-place nonlinearities, drop-ins for conv1 (strided, widening) and conv2, DLK/scSE."""
    entry = resenc_unet_entry(3, [2, 4, 4, 4], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]],
                              [[1, 3, 3]] + [[3, 3, 3]] * 3, n_blocks_per_stage=[1, 2, 2, 1], **extra)
    ours = _resenc_neutral(entry) if options is None else variant_architecture(entry, "scse", {
        "scse_encoder_stages": [], "scse_decoder_stages": [], **options})
    net = build(ours, 1, 2, True).train()
    x = torch.randn(1, 1, 8, 32, 32)
    with SavedTensors(exclude=net.parameters()) as rec:
        for o in net(x):
            rec.add(o)
    estimate = net.compute_conv_feature_map_size([8, 32, 32])
    assert abs(estimate - rec.elements) / rec.elements < 0.001, (estimate, rec.elements)  # measured: 0.01-0.07%


def test_resenc_snake_replaces_conv2_without_nonlinearity_and_keeps_the_residual_path():
    from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

    from nnunet_tubeconv.blocks import DSCBlock

    entry, _ = aniso_3d_resenc()
    vanilla = build(entry, 1, 3, ds=False)
    ours = variant_architecture(entry, "dsconv", {"conv_block_encoder_stages": [1, 3], "conv_block_convs": 2,
                                                  "conv_block_decoder_stages": []})
    net = build(ours, 1, 3, ds=False)
    for s in (1, 3):
        last, ref = net.encoder.stages[s].blocks[-1], vanilla.encoder.stages[s].blocks[-1]
        assert isinstance(last.conv1, DSCBlock) and isinstance(last.conv2, DSCBlock)
        assert isinstance(last.conv1.nonlin, nn.LeakyReLU)  # conv1 keeps its nonlinearity
        assert isinstance(last.conv2.nonlin, nn.Identity)  # conv2: norm, then the residual addition
        assert isinstance(last.conv2.plain[2], nn.LeakyReLU)  # the branches inside the block keep theirs
        assert isinstance(last.conv2.dropout, nn.Identity)
        assert type(last.skip) is type(ref.skip)  # the residual path is untouched
        assert isinstance(net.encoder.stages[s].blocks[0].conv2, ConvDropoutNormReLU)  # only the last 2 convs
    # block 0 of stage 3 carries the stride and the widening: a strided conv1 drop-in there
    ours = variant_architecture(entry, "dsconv", {"conv_block_encoder_stages": [3], "conv_block_convs": 4,
                                                  "conv_block_decoder_stages": []})
    first = build(ours, 1, 3, ds=False).encoder.stages[3].blocks[0]
    assert isinstance(first.conv1, DSCBlock) and list(first.conv1.stride) == [2, 2, 2]
    assert (first.conv1.input_channels, first.conv1.output_channels) == (6, 8)
    # ResidualEncoderUNet's initialisation zeroes the last norm of every residual branch, the snake block's too:
    # the block starts as nonlin2(residual path), as vanilla ResEnc's blocks do
    block = net.encoder.stages[1].blocks[-1]
    assert block.conv2.norm.weight.abs().sum() == 0
    x = torch.randn(2, 4, 8, 32, 32)
    net.train()
    torch.testing.assert_close(block(x.clone()), nn.functional.leaky_relu(block.skip(x), 0.01))


def test_resenc_options_count_residual_block_convs():
    entry, _ = aniso_3d_resenc()  # stage 0: one block = 2 convs; stages 1..5: two blocks = 4 convs
    with pytest.raises(ValueError, match="encoder stage 0 has only 2 conv"):
        variant_architecture(entry, "dsconv", {"conv_block_encoder_stages": [0], "conv_block_convs": 3})
    with pytest.raises(ValueError, match="decoder stage at resolution 2 has only 1 conv"):
        variant_architecture(entry, "dsconv", {"conv_block_convs": 2})  # ResEnc decoders have 1 conv per stage
    out = variant_architecture(entry, "dsconv", {"conv_block_encoder_stages": [1], "conv_block_decoder_stages": [],
                                                 "conv_block_convs": 4})
    assert out["arch_kwargs"]["block_options"]["conv_block_convs"] == 4
    # the ResEnc entry's kwargs are carried over unchanged
    assert {k: v for k, v in out["arch_kwargs"].items() if k != "block_options"} == entry["arch_kwargs"]


def test_resenc_entry_of_our_class_is_merged_and_neutral_entries_are_checked():
    from nnunet_tubeconv.architectures import RESENC_UNET_CLASS, TUBE_RESENC_UNET_CLASS, neutral_architecture

    entry, _ = aniso_3d_resenc()
    ours = variant_architecture(entry, "dsconv")
    assert ours["network_class_name"] == TUBE_RESENC_UNET_CLASS
    merged = variant_architecture(ours, "scse", {"conv_block_convs": 3, "conv_block_decoder_stages": []})
    assert merged["arch_kwargs"]["block_options"]["conv_block_convs"] == 3  # counted over residual blocks: 4 convs
    with pytest.raises(ValueError, match="encoder stage 2 has only 4 conv"):
        variant_architecture(ours, "scse", {"conv_block_convs": 5, "conv_block_decoder_stages": []})
    neutral = neutral_architecture(entry)
    assert neutral["arch_kwargs"]["block_options"] is None and entry["network_class_name"] == RESENC_UNET_CLASS
    with pytest.raises(ValueError, match="already ours"):
        neutral_architecture(ours)
    with pytest.raises(ValueError, match="ResidualUNet"):
        neutral_architecture({**entry, "network_class_name": "ResidualUNet"})


def test_resenc_refuses_bottleneck_blocks_and_bad_arguments():
    from dynamic_network_architectures.building_blocks.residual import BottleneckD
    from nnunet_tubeconv.architectures.unet import TubeResEncUNet

    entry, _ = aniso_3d_resenc()
    kw = copy.deepcopy(entry["arch_kwargs"])
    kw.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU)
    TubeResEncUNet(input_channels=1, num_classes=2, **kw)  # valid
    with pytest.raises(ValueError, match="BasicBlockD"):
        TubeResEncUNet(input_channels=1, num_classes=2, block=BottleneckD, **kw)
    with pytest.raises(ValueError, match="n_blocks_per_stage"):
        TubeResEncUNet(input_channels=1, num_classes=2, **{**kw, "n_blocks_per_stage": [1, 2]})
    with pytest.raises(ValueError, match="n_blocks_per_stage"):
        TubeResEncUNet(input_channels=1, num_classes=2, **{**kw, "n_blocks_per_stage": [0] * 6})
    with pytest.raises(ValueError, match="n_blocks_per_stage"):
        variant_architecture({**entry, "arch_kwargs": {k: v for k, v in kw.items() if k != "n_blocks_per_stage"}},
                             "scse")


def test_class_paths_of_the_resenc_host():
    import pydoc

    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    from nnunet_tubeconv.architectures import (
        HOSTS,
        PLAIN_CONV_UNET_CLASS,
        RESENC_UNET_CLASS,
        RESENC_UNET_NAMES,
        TUBE_RESENC_UNET_CLASS,
        host_class,
    )
    from nnunet_tubeconv.architectures.unet import TubeResEncUNet

    assert pydoc.locate(TUBE_RESENC_UNET_CLASS) is TubeResEncUNet
    assert pydoc.locate(RESENC_UNET_CLASS) is ResidualEncoderUNet
    assert RESENC_UNET_NAMES == (RESENC_UNET_CLASS, ResidualEncoderUNet.__name__)
    assert HOSTS == {PLAIN_CONV_UNET_CLASS: TUBE_UNET_CLASS, RESENC_UNET_CLASS: TUBE_RESENC_UNET_CLASS}
    assert host_class("ResidualEncoderUNet") == TUBE_RESENC_UNET_CLASS and host_class("ResidualUNet") is None
