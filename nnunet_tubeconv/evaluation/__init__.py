"""Evaluation for tubular structures: metrics, folder evaluation, paired statistics and the benchmark report.

* :mod:`~nnunet_tubeconv.evaluation.metrics`: Dice, IoU, HD95, NSD, clDice, Betti errors on masks (definitions and
  empty-mask rules in its docstring).
* :mod:`~nnunet_tubeconv.evaluation.folders`: :func:`evaluate_folders` and ``nnunet-tubeconv evaluate``; the
  results.json schema is documented there.
* :mod:`~nnunet_tubeconv.evaluation.stats`: paired sign-flip permutation test, bootstrap CI, rank-biserial, Holm,
  power, noise floor, verdicts.
* :mod:`~nnunet_tubeconv.evaluation.layout`: the benchmark results layout and record schema (one definition).
* :mod:`~nnunet_tubeconv.evaluation.serialise`: strict JSON and crash-safe writing of records and reports (the one
  owner, below the harness, so that the core never imports it).
* :mod:`~nnunet_tubeconv.evaluation.report`: ``nnunet-tubeconv report RESULTS_DIR``.
* ``python -m nnunet_tubeconv.evaluation.bench``: metric timings on a 512 x 512 x 128 vessel tree.
"""

from nnunet_tubeconv.evaluation.folders import (
    SCHEMA,
    EvaluationInputError,
    evaluate_folders,
    load_results,
    save_results,
)
from nnunet_tubeconv.evaluation.metrics import (
    HIGHER_IS_BETTER,
    METRICS,
    MetricSettings,
    betti_errors,
    betti_numbers,
    cldice,
    dice_iou,
    evaluate_masks,
    hausdorff_percentile,
    normalised_surface_distance,
    skeleton,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "SCHEMA",
    "EvaluationInputError",
    "MetricSettings",
    "betti_errors",
    "betti_numbers",
    "cldice",
    "dice_iou",
    "evaluate_folders",
    "evaluate_masks",
    "hausdorff_percentile",
    "load_results",
    "normalised_surface_distance",
    "save_results",
    "skeleton",
]
