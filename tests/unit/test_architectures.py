"""Plans conversion (``variant_architecture``) and the plain path of ``TubeUNet`` against nnU-Net's PlainConvUNet.

The per-variant network contract is tested in test_arch_contract.py.
"""

import copy
import json

import pytest
import torch
from dynamic_network_architectures.architectures.abstract_arch import test_submodules_loadable as submodules_loadable
from support.networks import build
from support.plans import aniso_3d, aniso_3d_resenc, iso_2d, iso_2d_resenc, plans_entry
from torch import nn

from nnunet_tubeconv.architectures import (
    DEFAULT_BLOCK_OPTIONS,
    TUBE_UNET_CLASS,
    VARIANTS,
    allowed_options,
    variant_architecture,
)
from nnunet_tubeconv.architectures.memory import SavedTensors
from nnunet_tubeconv.architectures.unet import TubeUNet
from nnunet_tubeconv.architectures.variants import resenc_unet_entry

torch.set_num_threads(1)

PLAIN = "dynamic_network_architectures.architectures.unet.PlainConvUNet"


def neutral(entry: dict) -> dict:
    """Our entry with no block at all."""
    return variant_architecture(entry, "scse", {"scse_encoder_stages": [], "scse_decoder_stages": "none"})


def network_kwargs(entry: dict) -> dict:
    """A 3D entry's ``arch_kwargs`` with the classes nnU-Net imports for it (what the network's constructor gets)."""
    kw = copy.deepcopy(entry["arch_kwargs"])
    kw.update(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d, nonlin=nn.LeakyReLU)
    return kw


def assert_same_outputs(vanilla: nn.Module, net: nn.Module, x: torch.Tensor, ds: bool, n_stages: int) -> None:
    """Both networks give the same output on ``x``: one per decoder stage with deep supervision, else one."""
    out_v, out_n = vanilla(x), net(x)
    if ds:
        assert isinstance(out_n, list) and len(out_n) == len(out_v) == n_stages - 1
        for a, b in zip(out_v, out_n):
            torch.testing.assert_close(a, b)
    else:
        torch.testing.assert_close(out_v, out_n)


def saved_elements(net: nn.Module, x: torch.Tensor) -> int:
    """Elements autograd saves in one forward of ``net`` on ``x``, the outputs included (parameters not)."""
    with SavedTensors(exclude=net.parameters()) as rec:
        out = net(x)
        for o in out if isinstance(out, list) else [out]:
            rec.add(o)
    return rec.elements


def check_feature_map_size(entry: dict, ours: dict, patch: list[int], ds: bool) -> None:
    """Our network's ``compute_conv_feature_map_size`` is what autograd saves (within 0.1%), and counts more than
    dynamic_network_architectures' estimate, which counts one tensor per conv."""
    net = build(ours, 2, 3, ds).train()
    measured = saved_elements(net, torch.randn(2, 2, *patch)) / 2
    estimate = net.compute_conv_feature_map_size(patch)
    assert abs(estimate - measured) / measured < 0.001, (estimate, measured)
    vanilla = build(entry, 2, 3, ds, init=False)
    assert estimate > 1.5 * vanilla.compute_conv_feature_map_size(patch)


def check_feature_map_size_small_3d(ours: dict) -> None:
    """The estimate against what autograd saves (within 0.1%) on one 8 x 32 x 32 input, deep supervision on."""
    net = build(ours, 1, 2, True).train()
    elements = saved_elements(net, torch.randn(1, 1, 8, 32, 32))
    estimate = net.compute_conv_feature_map_size([8, 32, 32])
    assert abs(estimate - elements) / elements < 0.001, (estimate, elements)


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
        assert_same_outputs(vanilla, net, torch.randn(1, 2, *patch), ds, entry["arch_kwargs"]["n_stages"])


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
    check_feature_map_size_small_3d(neutral(entry))  # measured: 0-0.07% apart


def test_bad_network_arguments_raise_value_error():
    kw = network_kwargs(aniso_3d()[0])
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
        assert_same_outputs(vanilla, net, x, ds, entry["arch_kwargs"]["n_stages"])


@pytest.mark.parametrize(("plan", "ours"), [(aniso_3d, neutral), (iso_2d, neutral), (aniso_3d_resenc, _resenc_neutral),
                                            (iso_2d_resenc, _resenc_neutral)])
@pytest.mark.parametrize("ds", [True, False])
def test_feature_map_size_matches_saved_tensors(plan, ours, ds):
    """Both hosts, neutral entries (measured: 0.03-0.07% apart on the plain host, 0.04-0.09% on ResEnc)."""
    entry, patch = plan()
    check_feature_map_size(entry, ours(entry), patch, ds)


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
    check_feature_map_size_small_3d(ours)  # measured: 0.01-0.07% apart


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
    kw = network_kwargs(entry)
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
