"""MaxBoxAcc / MaxBoxAccV2 / Top-1 Loc / GT-known Loc as an `evaluate` module (wsolevaluation conventions).

    metric = evaluate.load("path/to/hf_dualsig/metrics/evaluate_modules/maxboxacc")
    metric.add_batch(predictions=score_maps, references=gt_boxes, correct_class=[True, ...])
    metric.compute()

predictions: normalised score maps (H, W) in [0, 1]; references: each image's GT boxes (x0, y0, x1, y1) already at
the maps' resolution; correct_class (optional): whether the classifier was right (for Top-1 Loc).
"""

import datasets
import evaluate
import numpy as np

from hf_dualsig.metrics.wsol import BoxAccuracy, check_score_map

_FEATURES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
        "references": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
        "correct_class": datasets.Value("bool"),
    }
)


class MaxBoxAcc(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Choe et al., Evaluating Weakly Supervised Object Localization Methods Right, CVPR 2020.",
            inputs_description=__doc__,
            features=_FEATURES,
        )

    def add_batch(self, *, predictions=None, references=None, correct_class=None, **kwargs):
        """Add score maps, GT boxes and (optionally) whether each prediction was right."""
        correct_class = [True] * len(predictions) if correct_class is None else correct_class
        return super().add_batch(predictions=predictions, references=references, correct_class=correct_class, **kwargs)

    def _compute(
        self,
        predictions,
        references,
        correct_class,
        cam_threshold_interval=0.001,
        fixed_threshold=0.2,
        first_gt_box_only=False,
    ):
        accuracy = BoxAccuracy(cam_threshold_interval, fixed_threshold, first_gt_box_only)
        for i, (score_map, boxes, correct) in enumerate(zip(predictions, references, correct_class)):
            accuracy.add(
                check_score_map(np.asarray(score_map, np.float32), f"prediction {i}"),
                np.asarray(boxes, np.int64),
                bool(correct),
            )
        return accuracy.compute()
