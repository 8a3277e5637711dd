"""Sign fidelity in pose space: the pose stage's keypoints under the evaluation's conditions, scored
with the field's pose metrics (evaluation/pose_metrics.py) and the learned back-translator
(evaluation/recognizer.py).

The pose stage is deterministic given the text, so its predictions cost milliseconds: the intended
caption, the null text and a shuffled caption are each scored against the reference clip's
keypoints, beside the ground truth (the ceiling: the reference against itself) and, on the synthetic
signer, another rendering of the same glosses (the realistic floor the text leaves open).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from data import skeleton
from data.signer import parse_caption
from evaluation.pose_metrics import dtw_mje, dtw_mje_floor, total_distance
from pipeline import predict_keypoints

POSE_CONDITIONS = ("intended", "no_text", "shuffled", "ground_truth", "other_rendering")


def predicts_shoulders(model: torch.nn.Module) -> bool:
    """Whether the stage predicts a whole skeleton. The learned recogniser reads only those (each is
    normalised by its own shoulders); a stage without shoulders (pose_skeleton hands) is scored on
    the points it predicts, in its reference's shoulder widths (pose_metrics.normalize_pair)."""
    points = getattr(model, "pose_points", [])
    return all(p in points for p in skeleton.SHOULDERS)


def gloss_labels(refs: list[dict[str, Any]], synthetic_captions: bool) -> list[list[str]] | None:
    """The reference glosses where the data has them (`glosses` items), or parsed from the captions
    when they are the synthetic signer's language (a release-layout export of it); else None."""
    if all("glosses" in r and r["glosses"] for r in refs):
        return [list(r["glosses"]) for r in refs]
    if synthetic_captions:
        return [parse_caption(r["caption"]) for r in refs]
    return None


def _scores(pred: tuple[torch.Tensor, torch.Tensor], ref: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    return dict(dtw_mje=dtw_mje(pred[0], pred[1], ref[0], ref[1]),
                total_distance=total_distance(pred[0], pred[1], ref[0], ref[1]))


@torch.no_grad()
def pose_report(model: torch.nn.Module, tokenizer, refs: list[dict[str, Any]], cfg, captions: list[str],
                shuffled: list[str], other: list[dict[str, Any]] | None = None,
                recognizer=None, glosses: list[list[str]] | None = None,
                log: Callable[[str], None] = print) -> dict[str, Any]:
    """{condition: {dtw_mje, total_distance[, recognizer_wer, recognizer_accuracy]}, dtw_mje_floor,
    notes}. `other`: items of another rendering of each reference (pose_xy, pose_visible); `recognizer`
    with `glosses`: the learned back-translator's WER of each condition's keypoints."""
    ref = (torch.stack([r["pose_xy"] for r in refs]).float(), torch.stack([r["pose_visible"] for r in refs]))
    predicted = {
        "intended": predict_keypoints(model, tokenizer, captions, cfg),
        "no_text": predict_keypoints(model, tokenizer, captions, cfg, no_text=True),
        "shuffled": predict_keypoints(model, tokenizer, shuffled, cfg),
        "ground_truth": ref,
    }
    if other is not None:
        predicted["other_rendering"] = (torch.stack([o["pose_xy"] for o in other]).float(),
                                        torch.stack([o["pose_visible"] for o in other]))
    if not predicts_shoulders(model):  # every condition on the points the stage predicts, comparably
        keep = torch.zeros(skeleton.NUM_POINTS, dtype=torch.bool)
        keep[model.pose_points] = True
        for name in ("ground_truth", "other_rendering"):
            if name in predicted:
                predicted[name] = (predicted[name][0], predicted[name][1] & keep)
    report: dict[str, Any] = {name: _scores(pose, ref) for name, pose in predicted.items()}
    floor = dtw_mje_floor(ref[0], ref[1], captions)
    report["scored_points"] = "skeleton" if predicts_shoulders(model) else "hand centres"
    report["dtw_mje_floor"] = floor["dtw_mje"]
    report["dtw_mje_floor_pairs"] = floor["num_pairs"]
    if recognizer is not None and glosses is not None and predicts_shoulders(model):
        from evaluation.recognizer import recognizer_scores

        for name, (xy, visible) in predicted.items():
            scores = recognizer_scores(recognizer, xy, visible, glosses)
            report[name]["recognizer_wer"] = scores["gloss_wer"]
            report[name]["recognizer_accuracy"] = scores["gloss_accuracy"]
    return report


def format_pose_table(report: dict[str, Any]) -> str:
    conditions = [c for c in POSE_CONDITIONS if c in report]
    metrics = list(report["intended"])
    lines = [f"{'pose metric':<22}" + "".join(f"{c:>16}" for c in conditions)]
    for m in metrics:
        lines.append(f"{m:<22}" + "".join(f"{report[c][m]:>16.4f}" for c in conditions))
    lines.append(f"{'dtw_mje floor':<22}{report['dtw_mje_floor']:>16.4f}   (two references of the same text; "
                 f"{report['dtw_mje_floor_pairs']} pairs; nan: no text repeats in this split)")
    if report.get("scored_points") == "hand centres":
        lines.append("(the stage predicts the hand centres only: every condition is scored on them, in the "
                     "reference's shoulder widths)")
    lines.append("(DTW-MJE in shoulder widths, 0 = the reference; total distance = hand travel / the "
                 "reference's, 1 = ideal, 0 = frozen; the model makes fixed-length clips, so no duration ratio)")
    return "\n".join(lines)
