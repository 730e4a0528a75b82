"""The nnU-Net trainers: signature, purity, plans round trip, cascade, discovery through nnU-Net's own lookup.

Fast: tiny plans for anything that runs a forward pass; the MSD-HepaticVessel-shaped plans are built on the meta
device (shapes only, no memory, no compute).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
import textwrap
import types
from types import MappingProxyType

import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from support import REPO_ROOT
from support.nnunet import point_nnunet_at, stub_preprocessed
from support.plans import (
    HEPATIC_VESSEL_DATASET_JSON,
    TINY_DATASET_JSON,
    hepatic_vessel_like_plans,
    tiny_plans,
    tiny_resenc_plans,
)

from nnunet_tubeconv.architectures import (
    RESENC_UNET_CLASS,
    TUBE_RESENC_UNET_CLASS,
    TUBE_UNET_CLASS,
    VARIANTS,
    resenc_unet_entry,
)
from nnunet_tubeconv.trainers import (
    TRAINER_MODULES,
    TRAINERS,
    nnUNetTrainerDSConv,
    nnUNetTrainerTubeBase,
    trainer_folder,
)

torch.set_num_threads(1)

ALL_TRAINERS = sorted(TRAINERS)
#: the trainers whose network is a TubeUNet variant (the loss trainers and Wide have their own tests)
TUBE_TRAINERS = sorted(n for n in TRAINERS if issubclass(TRAINERS[n], nnUNetTrainerTubeBase))
REQUIRED = [
    "nnUNetTrainerDSConv",
    "nnUNetTrainerDLKDFF",
    "nnUNetTrainerScSE",
    "nnUNetTrainerDeformConv",
    "nnUNetTrainerTubeConv",
]


def _build(cls, plans: dict, configuration: str, dataset_json: dict, ds: bool = True, meta: bool = False):
    pm = PlansManager(plans)
    cm = pm.get_configuration(configuration)
    n_in = determine_num_input_channels(pm, cm, dataset_json)
    n_out = pm.get_label_manager(dataset_json).num_segmentation_heads
    if meta:
        with torch.device("meta"):
            return cls.build_network_architecture(pm, cm, n_in, n_out, ds)
    return cls.build_network_architecture(pm, cm, n_in, n_out, ds)


def _build_keeping_plans(cls, plans: dict, configuration: str):
    """The trainer's network from ``plans`` (deep supervision on, seed 0), checking that the plans are untouched."""
    before = copy.deepcopy(plans)
    torch.manual_seed(0)
    net = _build(cls, plans, configuration, TINY_DATASET_JSON, ds=True)
    assert plans == before
    return net


def _check_deep_supervision_output(net: torch.nn.Module, plans: dict, configuration: str) -> list[int]:
    """In training mode a batch of 2 patches gives a list of outputs, the finest first; returns the patch size."""
    patch = PlansManager(plans).get_configuration(configuration).patch_size
    net.train()
    out = net(torch.randn(2, 1, *patch))
    assert isinstance(out, list) and tuple(out[0].shape) == (2, 2, *patch)  # deep supervision: finest first
    return patch


def _shapes(net: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _first_conv(net: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))


def test_required_trainers_exist_and_cover_every_variant():
    assert set(REQUIRED) <= set(TRAINERS)
    assert {getattr(TRAINERS[n], "variant", None) for n in TRAINERS} - {None} == set(VARIANTS)
    for name, cls in TRAINERS.items():
        assert cls.__name__ == name and issubclass(cls, nnUNetTrainer)


# bases that are building blocks, not trainers a user trains with (TubeBase without a variant builds nothing new)
NOT_REGISTERED = {"nnUNetTrainerTubeBase"}


def _registry_problems(modules: list[types.ModuleType], registry: dict[str, str]) -> list[str]:
    """Trainer classes the ``modules`` define but ``registry`` (name -> module) lacks, and registered names that
    the named module does not define."""
    problems = []
    defined = {}
    for module in modules:
        short = module.__name__.rsplit(".", 1)[-1]
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__:
                defined[name] = short
    for name, short in sorted(defined.items()):
        if name not in NOT_REGISTERED and registry.get(name) != short:
            problems.append(f"{name} is defined in {short} but not registered in TRAINER_MODULES")
    for name, short in sorted(registry.items()):
        if defined.get(name) != short:
            problems.append(f"TRAINER_MODULES registers {name} in {short}, which does not define it")
    return problems


def _trainer_package_modules() -> list[types.ModuleType]:
    names = [m.name for m in pkgutil.iter_modules([str(trainer_folder())])]
    return [importlib.import_module(f"nnunet_tubeconv.trainers.{n}") for n in names]


def test_every_trainer_defined_in_the_folder_is_registered():
    modules = _trainer_package_modules()
    assert {m.__name__.rsplit(".", 1)[-1] for m in modules} >= set(TRAINER_MODULES.values())
    assert _registry_problems(modules, TRAINER_MODULES) == []


def test_registry_check_catches_an_unregistered_and_a_misplaced_trainer():
    fake = types.ModuleType("nnunet_tubeconv.trainers.tubeconv_fake")
    fake.nnUNetTrainerFake = type("nnUNetTrainerFake", (nnUNetTrainerDSConv,), {"__module__": fake.__name__})
    fake.nnUNetTrainerDSConv = nnUNetTrainerDSConv  # imported, not defined here: not this module's trainer
    modules = [*_trainer_package_modules(), fake]
    assert _registry_problems(modules, TRAINER_MODULES) == [
        "nnUNetTrainerFake is defined in tubeconv_fake but not registered in TRAINER_MODULES"
    ]
    assert _registry_problems(modules, {**TRAINER_MODULES, "nnUNetTrainerFake": "tubeconv_fake"}) == []
    wrong = {**TRAINER_MODULES, "nnUNetTrainerFake": "tubeconv_fake", "nnUNetTrainerScSE": "tubeconv_fake"}
    assert _registry_problems(modules, wrong) == [
        "nnUNetTrainerScSE is defined in tubeconv_variants but not registered in TRAINER_MODULES",
        "TRAINER_MODULES registers nnUNetTrainerScSE in tubeconv_fake, which does not define it",
    ]


def test_readme_table_lists_every_registered_trainer():
    readme = (REPO_ROOT / "README.md").read_text()
    rows = {line.split("`")[1] for line in readme.splitlines() if line.startswith("| `nnUNetTrainer")}
    assert rows == set(TRAINER_MODULES)


def test_the_package_exports_every_registered_trainer():
    import nnunet_tubeconv.trainers as package

    assert set(TRAINER_MODULES) <= set(package.__all__) and set(TRAINER_MODULES) <= set(dir(package))
    for name in TRAINER_MODULES:
        assert getattr(package, name) is TRAINERS[name]
    with pytest.raises(AttributeError, match="nnUNetTrainerNoSuch"):
        package.nnUNetTrainerNoSuch  # noqa: B018


@pytest.mark.parametrize("name", ALL_TRAINERS)
def test_init_signature_is_nnunets(name):
    # nnU-Net stores the constructor arguments by reading this signature (my_init_kwargs)
    ours = inspect.signature(TRAINERS[name].__init__)
    stock = inspect.signature(nnUNetTrainer.__init__)
    assert list(ours.parameters) == list(stock.parameters)
    assert ours.parameters["device"].default == stock.parameters["device"].default


def test_build_is_a_classmethod_with_nnunets_new_signature():
    # inference calls build_network_architecture on the class and passes plans_manager by that name
    sig = inspect.signature(nnUNetTrainerDSConv.build_network_architecture)
    assert list(sig.parameters)[:2] == ["plans_manager", "configuration_manager"]
    assert isinstance(inspect.getattr_static(nnUNetTrainerTubeBase, "build_network_architecture"), classmethod)


@pytest.mark.parametrize("name", TUBE_TRAINERS)
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_build_runs_and_leaves_plans_alone(name, configuration):
    plans = tiny_plans()
    net = _build_keeping_plans(TRAINERS[name], plans, configuration)
    assert f"{type(net).__module__}.{type(net).__name__}" == TUBE_UNET_CLASS
    patch = _check_deep_supervision_output(net, plans, configuration)
    net.decoder.deep_supervision = False
    net.eval()
    with torch.no_grad():
        assert tuple(net(torch.randn(1, 1, *patch)).shape) == (1, 2, *patch)


@pytest.mark.parametrize("name", TUBE_TRAINERS)
def test_saved_plans_rebuild_the_same_network(name):
    """Original plans + class constants, or the plans the trainer saves (our entry), give the same network."""
    cls = TRAINERS[name]
    plans = tiny_plans()
    before = copy.deepcopy(plans)
    saved = json.loads(json.dumps(cls.plans_with_architecture(plans, "3d_fullres")))  # as plans.json on disk
    assert plans == before, "plans_with_architecture edited its input"
    entry = saved["configurations"]["3d_fullres"]["architecture"]
    assert entry["network_class_name"] == TUBE_UNET_CLASS
    assert entry["arch_kwargs"]["block_options"], "saved entry must carry the resolved block options"
    assert saved["configurations"]["2d"] == plans["configurations"]["2d"], "only the trained configuration changes"
    torch.manual_seed(0)
    a = _build(cls, plans, "3d_fullres", TINY_DATASET_JSON)
    torch.manual_seed(0)
    b = _build(cls, saved, "3d_fullres", TINY_DATASET_JSON)
    assert _shapes(a) == _shapes(b)
    b.load_state_dict(a.state_dict())  # strict
    x = torch.randn(1, 1, 16, 16, 16)
    a.eval(), b.eval()
    a.decoder.deep_supervision = b.decoder.deep_supervision = False
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    # even a plain trainer of ours rebuilds a saved folder: the entry is the whole description
    c = _build(nnUNetTrainerTubeBase, saved, "3d_fullres", TINY_DATASET_JSON)
    assert _shapes(c) == _shapes(a)


def test_variants_differ_from_each_other():
    plans = tiny_plans()
    shapes = {n: _shapes(_build(TRAINERS[n], plans, "2d", TINY_DATASET_JSON)) for n in REQUIRED}
    assert len({tuple(sorted(s.items())) for s in shapes.values()}) == len(REQUIRED)


def test_block_options_of_a_subclass_reach_the_network():
    class nnUNetTrainerDSConvK5(nnUNetTrainerDSConv):
        block_options = MappingProxyType({"snake_kernel_size": 5})

    saved = nnUNetTrainerDSConvK5.plans_with_architecture(tiny_plans(), "2d")
    opts = saved["configurations"]["2d"]["architecture"]["arch_kwargs"]["block_options"]
    assert opts["snake_kernel_size"] == 5 and opts["conv_block"] == "dsc"
    default = nnUNetTrainerDSConv.plans_with_architecture(tiny_plans(), "2d")
    assert default["configurations"]["2d"]["architecture"]["arch_kwargs"]["block_options"]["snake_kernel_size"] == 9


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"])
def test_hepatic_vessel_shaped_plans_every_configuration(configuration):
    """Real-sized plans, all four configurations; the cascade gets the previous stage's one-hot labels as input."""
    cls = TRAINERS["nnUNetTrainerTubeConv"]
    plans = hepatic_vessel_like_plans()
    before = copy.deepcopy(plans)
    pm = PlansManager(plans)
    n_in = determine_num_input_channels(pm, pm.get_configuration(configuration), HEPATIC_VESSEL_DATASET_JSON)
    assert n_in == (3 if configuration == "3d_cascade_fullres" else 1)  # CT + vessel + tumour one-hot

    net = _build(cls, plans, configuration, HEPATIC_VESSEL_DATASET_JSON, meta=True)
    assert plans == before
    assert _first_conv(net).in_channels == n_in
    head_out = {v[0] for k, v in _shapes(net).items() if "seg_layers" in k and k.endswith("weight")}
    assert head_out == {3}  # background, vessel, tumour

    saved = json.loads(json.dumps(cls.plans_with_architecture(plans, configuration)))
    assert plans == before
    again = _build(cls, saved, configuration, HEPATIC_VESSEL_DATASET_JSON, meta=True)
    assert _shapes(again) == _shapes(net)
    if configuration == "3d_cascade_fullres":
        # the entry goes into the cascade's own configuration; 3d_fullres, which it inherits from, stays stock
        assert saved["configurations"]["3d_cascade_fullres"]["inherits_from"] == "3d_fullres"
        assert saved["configurations"]["3d_fullres"] == plans["configurations"]["3d_fullres"]
        assert saved["configurations"]["3d_cascade_fullres"]["architecture"]["network_class_name"] == TUBE_UNET_CLASS
        fullres = _build(cls, plans, "3d_fullres", HEPATIC_VESSEL_DATASET_JSON, meta=True)
        differ = {k for k, s in _shapes(net).items() if _shapes(fullres)[k] != s}
        assert differ and all(_shapes(fullres)[k][1] == 1 and _shapes(net)[k][1] == 3 for k in differ)


def test_other_network_classes_are_refused_with_a_clear_message():
    plans = tiny_plans()
    entry = plans["configurations"]["3d_fullres"]["architecture"]
    entry["network_class_name"] = "dynamic_network_architectures.architectures.unet.ResidualUNet"
    entry["arch_kwargs"]["n_blocks_per_stage"] = entry["arch_kwargs"].pop("n_conv_per_stage")
    with pytest.raises(ValueError, match="ResidualUNet") as e:
        _build(nnUNetTrainerDSConv, plans, "3d_fullres", TINY_DATASET_JSON)
    message = str(e.value)
    assert "nnUNetTrainerDSConv" in message
    assert "PlainConvUNet" in message and RESENC_UNET_CLASS in message and "nnUNetResEncUNetMPlans" in message
    with pytest.raises(ValueError, match="ResidualUNet"):
        nnUNetTrainerDSConv.plans_with_architecture(plans, "3d_fullres")
    with pytest.raises(ValueError, match="ResidualUNet"):
        _build(TRAINERS["nnUNetTrainerWide"], plans, "3d_fullres", TINY_DATASET_JSON)


# ----------------------------------------------------- ResEnc plans (nnU-Net's recommended ResidualEncoderUNet presets)


@pytest.mark.parametrize("name", ALL_TRAINERS)
@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_every_trainer_builds_from_resenc_plans(name, configuration):
    """Every registered trainer accepts nnU-Net's ResEnc plans: block trainers build a TubeResEncUNet, the loss-only
    trainers nnU-Net's ResidualEncoderUNet, Wide a widened ResidualEncoderUNet."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunet_tubeconv.architectures.unet import TubeResEncUNet

    cls = TRAINERS[name]
    plans = tiny_resenc_plans()
    net = _build_keeping_plans(cls, plans, configuration)
    if issubclass(cls, nnUNetTrainerTubeBase):
        assert type(net) is TubeResEncUNet
        saved = json.loads(json.dumps(cls.plans_with_architecture(plans, configuration)))
        entry = saved["configurations"][configuration]["architecture"]
        assert entry["network_class_name"] == TUBE_RESENC_UNET_CLASS and entry["arch_kwargs"]["block_options"]
        again = _build(cls, saved, configuration, TINY_DATASET_JSON)  # the model folder's plans.json
        again.load_state_dict(net.state_dict())  # strict
    else:
        assert type(net) is ResidualEncoderUNet
    if name == "nnUNetTrainerWide":
        base = plans["configurations"][configuration]["architecture"]["arch_kwargs"]["features_per_stage"]
        assert all(w > b for w, b in zip(net.encoder.output_channels, base))
    _check_deep_supervision_output(net, plans, configuration)


def test_wide_on_resenc_plans_matches_dsconv_on_the_resenc_host():
    from nnunet_tubeconv.architectures.wide import parameter_count

    cls = TRAINERS["nnUNetTrainerWide"]
    plans = tiny_resenc_plans()
    pm = PlansManager(plans)
    record = cls.plans_with_wide_architecture(plans, "2d", TINY_DATASET_JSON)["configurations"]["2d"]["tubeconv_wide"]
    snake = nnUNetTrainerDSConv.plans_with_architecture(plans, "2d")["configurations"]["2d"]["architecture"]
    assert record["target"] == parameter_count(snake, 1, 2)
    assert record["vanilla"] == parameter_count(pm.plans["configurations"]["2d"]["architecture"], 1, 2)
    assert abs(record["achieved"] - record["target"]) < 0.02 * record["target"] < record["target"] - record["vanilla"]


def test_resenc_m_shaped_plans_default_placements():
    """HepaticVessel-sized ResEnc M plans (1-3-4-6-6-6 blocks; meta device): the variants' default placements."""
    from nnunet_tubeconv.architectures.unet import residual_stage_convs

    plans = hepatic_vessel_like_plans()
    for configuration in ("2d", "3d_fullres", "3d_lowres"):
        kw = plans["configurations"][configuration]["architecture"]["arch_kwargs"]
        plans["configurations"][configuration]["architecture"] = resenc_unet_entry(
            len(kw["kernel_sizes"][0]), kw["features_per_stage"], kw["strides"], kw["kernel_sizes"])
    for name, configuration in [("nnUNetTrainerTubeConv", "3d_fullres"), ("nnUNetTrainerDLKDFF", "3d_fullres"),
                                ("nnUNetTrainerDeformConv", "3d_cascade_fullres"), ("nnUNetTrainerDSConv", "2d")]:
        net = _build(TRAINERS[name], plans, configuration, HEPATIC_VESSEL_DATASET_JSON, meta=True)
        opts = net.block_options
        assert type(net).__name__ == "TubeResEncUNet"
        for s in opts["conv_block_encoder_stages"]:  # the snake / deformable conv replaces the last block's conv2
            block, conv = residual_stage_convs(net.encoder.stages[s])[-1]
            assert conv == "conv2" and type(block.conv2).__name__ in ("DSCBlock", "DeformConv")
        extra = (opts["dlk_blocks_per_stage"] if 2 in opts["dlk_encoder_stages"] else 0) + (
            2 in opts["scse_encoder_stages"])
        assert len(net.encoder.stages[2].blocks) == 4 + extra  # ResEnc M: 4 residual blocks in stage 2


def test_base_trainer_needs_a_variant_or_our_plans():
    with pytest.raises(ValueError, match="no variant"):
        _build(nnUNetTrainerTubeBase, tiny_plans(), "2d", TINY_DATASET_JSON)


def test_unknown_configuration_is_a_value_error():
    with pytest.raises(ValueError, match=r"'3d_lowres' is not in the plans.*\['2d', '3d_fullres'\]"):
        nnUNetTrainerDSConv.plans_with_architecture(tiny_plans(), "3d_lowres")


def test_trainer_instance_saves_our_entry_and_keeps_callers_plans(tmp_path, monkeypatch):
    point_nnunet_at(tmp_path, monkeypatch)
    plans = tiny_plans()
    plans["continue_training"] = False  # what nnUNetv2_train adds; nnUNetTrainer pops it
    before = copy.deepcopy(plans)
    trainer = nnUNetTrainerDSConv(plans, "2d", 0, TINY_DATASET_JSON, device=torch.device("cpu"))
    assert plans == before
    assert trainer.configuration_manager.network_arch_class_name == TUBE_UNET_CLASS
    assert trainer.plans_manager.plans["configurations"]["2d"]["architecture"]["network_class_name"] == TUBE_UNET_CLASS
    assert set(trainer.my_init_kwargs) == {"plans", "configuration", "fold", "dataset_json", "device"}
    # what inference does with the checkpoint's plans: rebuild from the class alone
    net = nnUNetTrainerDSConv.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, 1, 2, False
    )
    ref = _build(nnUNetTrainerDSConv, before, "2d", TINY_DATASET_JSON, ds=False)
    assert _shapes(net) == _shapes(ref)


def test_trainer_modules_import_as_top_level_modules(tmp_path):
    """nnUNet_extTrainer's lookup imports every module of the folder by its bare name; nothing may run at import."""
    code = textwrap.dedent(
        f"""
        import importlib, pkgutil, sys
        sys.path.insert(0, {str(trainer_folder())!r})
        names = [m.name for m in pkgutil.iter_modules([{str(trainer_folder())!r}])]
        assert names, names
        for n in names:
            m = importlib.import_module(n)
        print(",".join(names))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "no module found"
    assert not list(tmp_path.iterdir()), "importing the trainer modules wrote files"


def test_importing_the_package_is_cheap():
    code = "import sys, nnunet_tubeconv.trainers as t; t.trainer_folder(); print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_nnunet_lookup_finds_ours_and_a_users_subclass(tmp_path, monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    user = tmp_path / "my_trainers"
    user.mkdir()
    (user / "my_short_dsconv.py").write_text(
        textwrap.dedent(
            """
            import torch
            from nnunet_tubeconv.trainers import nnUNetTrainerDSConv


            class nnUNetTrainerDSConvShortForTest(nnUNetTrainerDSConv):
                def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
                    super().__init__(plans, configuration, fold, dataset_json, device)
                    self.num_epochs = 3
            """
        )
    )
    # several folders, separated by os.pathsep, as nnU-Net documents
    monkeypatch.setenv("nnUNet_extTrainer", f"{trainer_folder()}{os.pathsep}{user}")
    found = {n: recursive_find_trainer_class_by_name(n) for n in [*REQUIRED, "nnUNetTrainerDSConvShortForTest"]}
    for n, cls in found.items():
        assert cls.__name__ == n
    assert found["nnUNetTrainerDSConvShortForTest"].variant == "dsconv"
    assert found["nnUNetTrainerTubeConv"].variant == "tubeconv"
    # the user's subclass alone on the path is enough (absolute imports reach our package)
    monkeypatch.setenv("nnUNet_extTrainer", str(user))
    sub = recursive_find_trainer_class_by_name("nnUNetTrainerDSConvShortForTest")
    # found through the user's folder alone, it subclasses the very class our package defines
    assert sub.__mro__[1] is nnUNetTrainerDSConv and sub.__module__ == "my_short_dsconv"
    net = _build(sub, tiny_plans(), "2d", TINY_DATASET_JSON)
    assert _shapes(net) == _shapes(_build(nnUNetTrainerDSConv, tiny_plans(), "2d", TINY_DATASET_JSON))


def test_resume_uses_the_checkpoints_architecture(tmp_path, monkeypatch):
    """--c / --val rebuild the trainer from the preprocessed plans and today's defaults; the checkpoint wins."""
    plans = tiny_plans()
    stub_preprocessed(tmp_path, monkeypatch, plans)

    class nnUNetTrainerDSConvK5(nnUNetTrainerDSConv):  # "yesterday's defaults"
        block_options = MappingProxyType({"snake_kernel_size": 5})

    def trainer(cls):
        return cls({**plans, "continue_training": True}, "2d", 0, TINY_DATASET_JSON, device=torch.device("cpu"))

    old = trainer(nnUNetTrainerDSConvK5)
    old.initialize()
    ckpt = tmp_path / "checkpoint_latest.pth"
    old.save_checkpoint(str(ckpt))

    new = trainer(nnUNetTrainerDSConv)
    assert new.configuration_manager.network_arch_init_kwargs["block_options"]["snake_kernel_size"] == 9
    new.load_checkpoint(str(ckpt))  # strict state-dict load inside: fails if the K=9 network were built
    assert new.configuration_manager.network_arch_init_kwargs["block_options"]["snake_kernel_size"] == 5
    assert _shapes(new.network) == _shapes(old.network)
    for k, v in old.network.state_dict().items():
        torch.testing.assert_close(new.network.state_dict()[k], v)
    assert new.adopt_checkpoint_architecture(torch.load(ckpt, weights_only=False)) is False  # now the same

    other = trainer(nnUNetTrainerDSConv)
    other.initialize()
    with pytest.raises(ValueError, match="before initialize"):
        other.adopt_checkpoint_architecture(torch.load(ckpt, weights_only=False))
