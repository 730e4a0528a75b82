"""nnU-Net's network contract for every variant x {2D, 3D} x host {PlainConvUNet, ResidualEncoderUNet}, on plans
shaped like the default planner's and the ResEnc planners'.

3D: 6 stages, [1,3,3] kernels and [1,2,2] strides in the first stages (thick slices). 2D: 7 stages. Widths and
patches are tiny so that the whole file runs in seconds on one CPU thread.
"""

import json

import pytest
import torch
from support.networks import build
from support.plans import PLANS_BY_HOST

from nnunet_tubeconv.architectures import HOSTS, VARIANTS, variant_architecture
from nnunet_tubeconv.architectures.memory import SavedTensors
from nnunet_tubeconv.architectures.unet import residual_stage_convs

torch.set_num_threads(1)

NUM_CLASSES = 3
CASES = [(v, d, h) for h in PLANS_BY_HOST for v in sorted(VARIANTS) for d in (2, 3)]


def _resolutions(entry: dict, patch: list[int]) -> list[list[int]]:
    sizes, size = [], list(patch)
    for stride in entry["arch_kwargs"]["strides"][:-1]:
        size = [s // k for s, k in zip(size, stride)]
        sizes.append(size)
    return sizes


def _stage_convs(net, s: int) -> list:
    """Encoder stage ``s``'s replaceable convolutions in forward order, on either host."""
    stage = net.encoder.stages[s]
    if hasattr(stage, "blocks"):  # residual encoder
        return [getattr(block, name) for block, name in residual_stage_convs(stage)]
    return list(stage[0].convs)


@pytest.fixture(scope="module", params=CASES, ids=[f"{h}-{v}-{d}d" for v, d, h in CASES])
def case(request):
    variant, dim, host = request.param
    three_d, two_d = PLANS_BY_HOST[host]
    plans, patch = (two_d if dim == 2 else three_d)()
    entry = variant_architecture(plans, variant)
    torch.manual_seed(0)
    net = build(entry, 1, NUM_CLASSES, ds=True)
    return {"variant": variant, "entry": entry, "patch": patch, "net": net, "nnunet_class":
            plans["network_class_name"]}


def test_entry_names_our_class(case):
    ours = HOSTS[case["nnunet_class"]]
    assert case["entry"]["network_class_name"] == ours
    assert type(case["net"]).__module__ + "." + type(case["net"]).__name__ == ours


def test_forward_shapes_deep_supervision_on_and_off(case):
    net, entry, patch = case["net"], case["entry"], case["patch"]
    x = torch.randn(2, 1, *patch)
    net.train()
    out = net(x)
    n_stages = entry["arch_kwargs"]["n_stages"]
    assert isinstance(out, list) and len(out) == n_stages - 1
    for o, size in zip(out, _resolutions(entry, patch)):  # highest resolution first
        assert tuple(o.shape) == (2, NUM_CLASSES, *size)
        assert torch.isfinite(o).all()
    # no final softmax / sigmoid: raw logits, neither in [0, 1] nor summing to 1 over classes
    assert (out[0] < 0).any()
    assert not torch.allclose(out[0].sum(1), torch.ones_like(out[0][:, 0]), atol=1e-3)
    net.decoder.deep_supervision = False
    try:
        single = net(x)
    finally:
        net.decoder.deep_supervision = True
    assert isinstance(single, torch.Tensor) and tuple(single.shape) == (2, NUM_CLASSES, *patch)


def test_state_dict_independent_of_deep_supervision(case):
    net, entry, patch = case["net"], case["entry"], case["patch"]
    plain = build(entry, 1, NUM_CLASSES, ds=False)
    sd_on, sd_off = net.state_dict(), plain.state_dict()
    assert sd_on.keys() == sd_off.keys()
    assert all(sd_on[k].shape == sd_off[k].shape for k in sd_on)
    plain.load_state_dict(sd_on, strict=True)  # inference loads the training checkpoint strictly
    build(entry, 1, NUM_CLASSES, ds=True).load_state_dict(sd_off, strict=True)
    x = torch.randn(1, 1, *patch)
    net.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x)[0])
    net.train()


def test_every_parameter_gets_a_gradient(case):
    net, patch = case["net"], case["patch"]
    net.train()
    net.zero_grad(set_to_none=True)
    out = net(torch.randn(2, 1, *patch))
    sum(o.square().mean() for o in out).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient (DDP would crash): {missing}"
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    opt = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)
    opt.step()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_cascade_input_channels(case):
    """Cascade full-res: image channels + one-hot of the low-res stage's classes."""
    entry, patch = case["entry"], case["patch"]
    in_ch = 2 + NUM_CLASSES
    net = build(entry, in_ch, NUM_CLASSES, ds=False)
    out = net(torch.randn(1, in_ch, *patch))
    assert tuple(out.shape) == (1, NUM_CLASSES, *patch)
    with pytest.raises(RuntimeError):
        net(torch.randn(1, 1, *patch))


def test_json_round_trip_rebuilds_the_same_network(case):
    net, entry, patch = case["net"], case["entry"], case["patch"]
    again = json.loads(json.dumps(entry))
    assert again == entry
    rebuilt = build(again, 1, NUM_CLASSES, ds=True)
    sd, sd2 = net.state_dict(), rebuilt.state_dict()
    assert sd.keys() == sd2.keys() and all(sd[k].shape == sd2[k].shape for k in sd)
    rebuilt.load_state_dict(sd, strict=True)
    x = torch.randn(1, 1, *patch)
    net.eval()
    rebuilt.eval()
    with torch.no_grad():
        for a, b in zip(net(x), rebuilt(x)):
            torch.testing.assert_close(a, b)
    net.train()


def test_blocks_are_where_the_options_say(case):
    net, opts = case["net"], case["entry"]["arch_kwargs"]["block_options"]
    names = {type(m).__name__ for m in net.modules()}
    expected = {"dsc": "DSCBlock", "deform": "DeformConv"}
    if opts["conv_block"] != "conv":
        assert expected[opts["conv_block"]] in names
        for s in opts["conv_block_encoder_stages"]:
            convs = _stage_convs(net, s)
            assert type(convs[-1]).__name__ == expected[opts["conv_block"]]
            assert type(convs[-1 - opts["conv_block_convs"]]).__name__ == "ConvDropoutNormReLU"
    assert ("DLKBlock" in names) == bool(opts["dlk_encoder_stages"])
    assert ("DFF" in names) == bool(opts["dff_skips"])
    assert ("SCSE" in names) == bool(opts["scse_encoder_stages"] or opts["scse_decoder_stages"])
    n = len(net.decoder.stages)
    for r in opts["dff_skips"]:
        assert type(net.decoder.fusions[n - 1 - r]).__name__ == "DFF"


def test_zero_initialised_convs_survive_nnunet_initialisation(case):
    net = case["net"]  # built by get_network_from_plans(allow_init=True): network.apply(network.initialize) ran
    kept = [m for m in net.modules() if getattr(m, "_tubeconv_keep_init", False)]
    if case["entry"]["arch_kwargs"]["block_options"]["conv_block"] in ("dsc", "deform"):
        assert kept, "the snake/deformable blocks should mark their zero-initialised offset convolutions"
    fresh = build(case["entry"], 1, NUM_CLASSES, ds=True)
    for m in (m for m in fresh.modules() if getattr(m, "_tubeconv_keep_init", False)):
        assert m.weight.abs().sum() == 0


def test_feature_map_size_matches_saved_tensors(case):
    net, patch = case["net"], case["patch"]
    net.train()
    x = torch.randn(2, 1, *patch)
    with SavedTensors(exclude=net.parameters()) as rec:
        out = net(x)
        for o in out:
            rec.add(o)
    measured = rec.elements / 2
    estimate = net.compute_conv_feature_map_size(patch)
    # measured: within 0.02-0.08% (PlainConvUNet host) and 0.03-0.09% (ResEnc host) for every variant in 2D and 3D
    assert abs(estimate - measured) / measured < 0.001, (estimate, measured)
