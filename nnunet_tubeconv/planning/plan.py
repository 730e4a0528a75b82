"""``nnunet-tubeconv plan``: memory-aware nnU-Net plans for one variant, host and GPU memory target.

``--preset`` picks the host network and the nnU-Net planner our preset subclasses: ``plain`` (nnU-Net's
``ExperimentPlanner``, PlainConvUNet) or ``resenc-m`` / ``resenc-l`` / ``resenc-xl`` (``nnUNetPlannerResEncM/L/XL``,
ResidualEncoderUNet); see :mod:`nnunet_tubeconv.planning.hosts`.

nnU-Net's ``nnUNetv2_plan_experiment -pl`` finds planner classes only inside nnunetv2's own source tree, so this
command calls nnU-Net's planning API (``plan_experiment_dataset``) with our preset class instead. It needs the data
set's fingerprint (``nnUNetv2_extract_fingerprint -d ID`` or ``nnUNetv2_plan_and_preprocess -d ID``); with
``--preprocess`` it preprocesses the configurations whose data does not exist yet (``3d_lowres`` always has its
own; ``2d`` / ``3d_fullres`` share the default planner's). It ends by printing the ``nnUNetv2_train`` lines.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def _gpu_memory(text: str) -> float:
    from nnunet_tubeconv.planning.estimate import check_gpu_memory

    try:
        return check_gpu_memory(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"block option must be KEY=VALUE (e.g. snake_kernel_size=5), got {text!r}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value  # a bare string such as dlk_mode=authors2025
    return key.strip(), parsed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-d", "--dataset", required=True,
                        help="data set id or name (e.g. 8 or Dataset008_HepaticVessel)")
    parser.add_argument("--variant", required=True,
                        help="network variant: vanilla, dsconv, dlkdff, scse, deform, tubeconv (see VARIANTS)")
    parser.add_argument("--preset", default="plain", metavar="PRESET",
                        help="host network and its nnU-Net planner: plain (nnU-Net's default U-Net, the default), "
                             "resenc-m, resenc-l, resenc-xl (nnU-Net's residual-encoder presets)")
    parser.add_argument("--gpu-memory", type=_gpu_memory, default=None, metavar="GB",
                        help="GPU memory target in GB (default: the preset's, as nnU-Net's planner sets it: 8 for "
                             "plain and resenc-m, 24 for resenc-l, 40 for resenc-xl)")
    parser.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help="block option laid over the variant's (JSON value), e.g. snake_kernel_size=5; repeatable")
    parser.add_argument("--plans-name", default=None,
                        help="plans name to write (default <preset plans>_<variant>_<GB>G, e.g. nnUNetPlans_dsconv_8G, "
                             "nnUNetResEncUNetLPlans_dsconv_24G)")
    parser.add_argument("--preprocess", action="store_true",
                        help="preprocess the planned configurations whose data does not exist yet")
    parser.add_argument("-np", "--num-processes", type=int, default=1,
                        help="worker processes for --preprocess (default 1)")


def _dataset_number(dataset_name: str) -> int:
    return int(dataset_name[len("Dataset"):len("Dataset") + 3])


def run(args: argparse.Namespace) -> int:
    from nnunet_tubeconv.architectures.options import check_option_names

    options = dict(args.option) if args.option else None
    check_option_names(options)
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        if not os.environ.get(var):
            raise ValueError(f"the environment variable {var} is not set; nnU-Net needs nnUNet_raw and "
                         "nnUNet_preprocessed (see nnU-Net's documentation/setting_up_paths.md)")
    if args.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}")

    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset, preprocess_dataset
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    from nnunet_tubeconv.planning.hosts import HOST_PRESETS, check_host
    from nnunet_tubeconv.planning.planners import all_variants, planner_class, trainer_for

    if args.variant not in all_variants():
        raise ValueError(f"unknown variant {args.variant!r}; valid variants are {all_variants()}")
    try:
        host = check_host(args.preset)
    except ValueError:
        raise ValueError(f"unknown --preset {args.preset!r}; allowed presets: {list(HOST_PRESETS)}") from None
    gpu_memory = host.gpu_memory_gb if args.gpu_memory is None else args.gpu_memory
    dataset = int(args.dataset) if str(args.dataset).isdigit() else str(args.dataset)
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"data set {args.dataset!r} not found in nnUNet_raw ({nnUNet_raw}) nor nnUNet_preprocessed: "
                         f"{e}") from e
    raw_json = os.path.join(str(nnUNet_raw), name, "dataset.json")
    if not os.path.isfile(raw_json):
        raise ValueError(f"{raw_json} is missing; the planner reads the raw data set's dataset.json")
    fingerprint = os.path.join(str(nnUNet_preprocessed), name, "dataset_fingerprint.json")
    if not os.path.isfile(fingerprint):
        number = _dataset_number(name)
        raise ValueError(f"the data set fingerprint {fingerprint} is missing. Run `nnUNetv2_extract_fingerprint -d "
                     f"{number}` (or `nnUNetv2_plan_and_preprocess -d {number}`, which also writes the default "
                     "preprocessed data the presets reuse) first")
    cls = planner_class(args.variant, options, host=host.name)
    _, plans_name = plan_experiment_dataset(_dataset_number(name), cls, gpu_memory_target_in_gb=gpu_memory,
                                            overwrite_plans_name=args.plans_name)

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_file = os.path.join(str(nnUNet_preprocessed), name, plans_name + ".json")
    pm = PlansManager(plans_file)
    configs = [c for c in ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres") if c in pm.available_configurations]
    missing = []
    for c in configs:
        cm = pm.get_configuration(c)
        if c != "3d_cascade_fullres" and not os.path.isdir(os.path.join(str(nnUNet_preprocessed), name,
                                                                        cm.data_identifier)):
            missing.append(c)
    if args.preprocess and missing:
        preprocess_dataset(_dataset_number(name), plans_name, configurations=missing,
                           num_processes=[args.num_processes] * len(missing), show_progress_bar=False)
        missing = []

    number = _dataset_number(name)
    trainer = trainer_for(args.variant)
    print(f"\nWrote {plans_file} (variant {args.variant} on {host.label}, GPU memory target {gpu_memory:g} GB)")
    for c in configs:
        cm = pm.get_configuration(c)
        print(f"  {c:<19} patch {list(cm.patch_size)}  batch {cm.batch_size}  data {cm.data_identifier}")
    if missing:
        print(f"\nNot preprocessed yet: {missing}. Run\n  nnUNetv2_preprocess -d {number} -plans_name {plans_name} "
              f"-c {' '.join(missing)}\n(or this command again with --preprocess).")
    if trainer != "nnUNetTrainer":
        from nnunet_tubeconv.trainers import trainer_folder

        print(f"\nnnU-Net finds our trainers through\n  export nnUNet_extTrainer={trainer_folder()}")
    print("\nTrain (folds 0 to 4) with:")
    for c in configs:
        print(f"  nnUNetv2_train {number} {c} 0 -tr {trainer} -p {plans_name}")
    return 0
