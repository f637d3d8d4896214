"""PxAP (and PIoU) as an `evaluate` module (wsolevaluation conventions).

    metric = evaluate.load("path/to/hf_dualsig/metrics/evaluate_modules/pxap")
    metric.add_batch(predictions=score_maps, references=gt_masks)
    metric.compute()

predictions: normalised score maps (H, W) in [0, 1]; references: boolean foreground masks of the same shape;
ignore_masks (optional): regions to drop outside the foreground. PIoU = max over thresholds of TP / (TP + FP + FN).
"""

import datasets
import evaluate
import numpy as np

from hf_dualsig.metrics.wsol import PixelPrecision, check_score_map

_FEATURES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "references": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
        "ignore_masks": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
    }
)


class PxAP(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Choe et al., Evaluating Weakly Supervised Object Localization Methods Right, CVPR 2020.",
            inputs_description=__doc__,
            features=_FEATURES,
        )

    def add_batch(self, *, predictions=None, references=None, ignore_masks=None, **kwargs):
        """Add score maps, foreground masks and (optionally) ignore masks."""
        ignore_masks = [[]] * len(predictions) if ignore_masks is None else ignore_masks
        return super().add_batch(predictions=predictions, references=references, ignore_masks=ignore_masks, **kwargs)

    def _compute(self, predictions, references, ignore_masks, cam_threshold_interval=0.001):
        precision = PixelPrecision(cam_threshold_interval)
        for i, (score_map, mask, ignore) in enumerate(zip(predictions, references, ignore_masks)):
            score_map = check_score_map(np.asarray(score_map, np.float32), f"prediction {i}")
            precision.add(score_map, np.asarray(mask, bool), np.asarray(ignore, bool) if len(ignore) else None)
        return precision.compute()
