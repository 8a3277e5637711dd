"""A pose -> gloss back-translator the project trains itself, on a dataset's ground-truth keypoints.

No pretrained sign recogniser can be downloaded here, so, as the SLRTP-2025 organisers did for their
back-translation model, each dataset gets one trained on its own ground-truth training keypoints;
its WER on the ground-truth test keypoints is the ceiling that predicted poses are scored against.

Model (`models.architectures.recognizer.PoseCTCRecognizer`): each frame's reduced skeleton (data/skeleton.py),
normalised to shoulder width 1 (`evaluation.pose_metrics.normalize_skeleton`, pose-format's
`normalize`), as (x, y) * visible and visible per point -> a linear embedding -> residual temporal
convolutions -> per-frame gloss logits with a CTC blank; greedy decoding (argmax per frame, repeats
merged, blanks dropped). Local temporal convolutions, not attention over the whole clip: a gloss is
read from the frames around it, which is what lets the recogniser read gloss combinations it never
saw in training (the synthetic test split holds only those).

Training is deterministic under `RecognizerSpec.seed` (own RNG, batches drawn from a seeded
generator). The file (`Recognizer.save`) holds plain tensors and types only (weights, vocabulary,
spec) and loads with `torch.load(weights_only=True)`.

    python -m evaluation.recognizer --config FILE.yaml [--data_root DIR] [--key value ...]
        [--rec_steps N] [--rec_max_clips N] [--retrain]

trains (or reuses) the recogniser of cfg's dataset and prints its gloss WER / accuracy on the
ground-truth test keypoints (the cache and the CLI: evaluation/recognizer_cache.py).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import CheckpointError, atomic_write
from data import skeleton
from data.real.common import DatasetError
from evaluation.metrics import gloss_accuracy, gloss_wer
from evaluation.pose_metrics import normalize_skeleton
from models.architectures.recognizer import PoseCTCRecognizer

FORMAT_VERSION = 1
BLANK = 0  # CTC blank index; gloss g of the vocabulary is class g + 1


@dataclass(frozen=True)
class RecognizerSpec:
    """Everything that shapes a trained recogniser besides its data (part of the file's key)."""
    width: int = 128  # channels of the temporal convolutions
    depth: int = 4  # residual conv blocks; the receptive field is 1 + depth * (kernel_frames - 1) frames
    kernel_frames: int = 5  # temporal kernel of each block
    steps: int = 800  # optimizer steps
    batch_size: int = 64  # clips per step
    lr: float = 2e-3  # peak AdamW learning rate (linear warm-up, cosine to lr / 10)
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_train_clips: int = 0  # train on the first this many clips of the split; 0 = all
    seed: int = 0
    # Training augmentation (docs/experiments.md, row 53): a generator's keypoints are smoother than
    # an estimator's, so each training clip is box-filtered over a random odd number of frames up to
    # this (1 = off) and jittered by Gaussian noise of this many shoulder widths (0 = off).
    augment_smooth_max_frames: int = 5
    augment_jitter: float = 0.02

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            positive = f.name not in ("max_train_clips", "seed", "warmup_steps", "weight_decay", "augment_jitter")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (positive and value == 0):
                raise ValueError(f"recogniser setting '{f.name}' must be a number "
                                 f"{'> 0' if positive else '>= 0'}, got {value!r}")


def _as_clips(pose_xy, pose_visible, lengths=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(B, T, J, 2) + (B, T, J) [+ lengths (B,)] or lists of (T, J, 2) / (T, J) -> list of clips."""
    if hasattr(pose_xy, "detach"):
        pose_xy, pose_visible = pose_xy.detach().cpu().numpy(), pose_visible.detach().cpu().numpy()
    if len(pose_xy) != len(pose_visible) or (lengths is not None and len(lengths) != len(pose_xy)):
        raise ValueError(f"{len(pose_xy)} keypoint clips, {len(pose_visible)} visibility clips"
                         + ("" if lengths is None else f" and {len(lengths)} lengths"))
    clips = []
    for i, (xy, vis) in enumerate(zip(pose_xy, pose_visible)):
        xy = np.asarray(xy.cpu() if hasattr(xy, "cpu") else xy, np.float32)
        vis = np.asarray(vis.cpu() if hasattr(vis, "cpu") else vis).astype(bool)
        if lengths is not None:
            n = int(lengths[i])
            xy, vis = xy[:n], vis[:n]
        clips.append((xy, vis))
    return clips


def _pad(clips: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised clips -> xy (N, Tmax, J, 2), visible (N, Tmax, J), lengths (N,)."""
    t_max = max(len(xy) for xy, _ in clips)
    xy_out = torch.zeros(len(clips), t_max, skeleton.NUM_POINTS, 2)
    vis_out = torch.zeros(len(clips), t_max, skeleton.NUM_POINTS, dtype=torch.bool)
    for i, (xy, vis) in enumerate(clips):
        xy_out[i, :len(xy)], vis_out[i, :len(xy)] = torch.from_numpy(xy), torch.from_numpy(vis)
    return xy_out, vis_out, torch.tensor([len(xy) for xy, _ in clips])


def collect_clips(dataset, max_clips: int = 0) -> dict:
    """Read a Dataset whose items carry pose_xy (T, J, 2) float32 frame units, pose_visible (T, J)
    bool and glosses list[str] into normalised, padded tensors: {xy, visible, lengths, glosses,
    skipped: [(index, reason)]}. Clips that cannot be normalised (no frame with both shoulders) or
    that are shorter than their gloss list (CTC cannot emit it) are skipped and listed."""
    count = len(dataset) if max_clips <= 0 else min(max_clips, len(dataset))
    clips, glosses, skipped = [], [], []
    for index in range(count):
        item = dataset[index]
        missing = [k for k in ("pose_xy", "pose_visible", "glosses") if k not in item]
        if missing:
            raise DatasetError(f"item {index} of {type(dataset).__name__} has no {missing}: the recogniser "
                               "needs keypoints (pose_xy, pose_visible) and gloss labels (glosses)")
        labels = list(item["glosses"])
        if not labels or not all(isinstance(g, str) and g for g in labels):
            raise DatasetError(f"item {index} of {type(dataset).__name__}: glosses must be a non-empty "
                               f"list of strings, got {item['glosses']!r}")
        vis = np.asarray(item["pose_visible"]).astype(bool)
        try:
            xy = normalize_skeleton(item["pose_xy"], vis)
        except ValueError as exc:
            skipped.append((index, str(exc)))
            continue
        if len(xy) < len(labels):
            skipped.append((index, f"{len(xy)} frames for {len(labels)} glosses"))
            continue
        clips.append((xy, vis))
        glosses.append(labels)
    if not clips:
        raise DatasetError(f"none of the {count} clips of {type(dataset).__name__} is usable "
                           f"(first reason: {skipped[0][1] if skipped else 'empty dataset'})")
    xy, visible, lengths = _pad(clips)
    return dict(xy=xy, visible=visible, lengths=lengths, glosses=glosses, skipped=skipped)


def _window_sum(v: torch.Tensor, width: int) -> torch.Tensor:
    """(N, T, ...) summed over a centred window of `width` frames (nothing beyond the clip's ends)."""
    n, t = v.shape[:2]
    flat = v.reshape(n, t, -1).transpose(1, 2).reshape(-1, 1, t)
    summed = F.conv1d(flat, torch.ones(1, 1, width, dtype=v.dtype), padding=width // 2)
    return summed.reshape(n, -1, t).transpose(1, 2).reshape(v.shape)


def augment_clips(xy: torch.Tensor, visible: torch.Tensor, lengths: torch.Tensor, spec: RecognizerSpec,
                  gen: torch.Generator) -> torch.Tensor:
    """Training-time copies of normalised clips xy (B, T, J, 2): each clip averaged over a centred
    window of a random odd width in [1, spec.augment_smooth_max_frames] frames (over its visible,
    in-length frames only, so padding and lost points do not pull it), plus Gaussian jitter of
    spec.augment_jitter. The visibility is unchanged."""
    b, t = xy.shape[:2]
    widths = 1 + 2 * torch.randint((spec.augment_smooth_max_frames - 1) // 2 + 1, (b,), generator=gen)
    in_length = torch.arange(t)[None] < lengths[:, None]  # (B, T)
    weight = (visible & in_length[..., None]).to(xy.dtype)  # (B, T, J)
    out = xy.clone()
    for width in widths.unique().tolist():
        if width == 1:
            continue
        rows, w = widths == width, weight[widths == width]
        total, count = _window_sum(xy[rows] * w[..., None], width), _window_sum(w, width)[..., None]
        out[rows] = torch.where(count > 0, total / count.clamp(min=1e-6), xy[rows])
    if spec.augment_jitter > 0:
        out = out + spec.augment_jitter * torch.randn(out.shape, generator=gen, dtype=out.dtype)
    return out * weight[..., None]


def ctc_collapse(frame_classes: list[int]) -> list[int]:
    """Greedy CTC read-out of per-frame argmax classes: merge repeats, then drop blanks."""
    out, prev = [], BLANK
    for c in frame_classes:
        if c != prev and c != BLANK:
            out.append(c)
        prev = c
    return out


class Recognizer:
    """A trained PoseCTCRecognizer with its gloss vocabulary; `decode` reads keypoint clips."""

    def __init__(self, model: PoseCTCRecognizer, vocab: list[str], spec: RecognizerSpec, info: dict | None = None):
        self.model, self.vocab, self.spec, self.info = model.eval(), list(vocab), spec, dict(info or {})
        self.path: str | None = None  # the file it was loaded from or saved to

    @torch.no_grad()
    def decode(self, pose_xy, pose_visible, lengths=None, batch_size: int = 256) -> list[list[str] | None]:
        """Gloss lists of clips in frame units ((B, T, J, 2) + (B, T, J) [+ lengths] or lists of
        clips); None for a clip that cannot be normalised (no frame with both shoulders)."""
        out: list[list[str] | None] = []
        readable = []
        for k, (xy, vis) in enumerate(_as_clips(pose_xy, pose_visible, lengths)):
            try:
                readable.append((k, (normalize_skeleton(xy, vis), vis)))
            except ValueError:
                pass
            out.append(None)
        for start in range(0, len(readable), batch_size):
            chunk = readable[start:start + batch_size]
            xy, vis, lens = _pad([c for _, c in chunk])
            best = self.model(xy, vis, lens).argmax(-1)  # (B, T)
            for (k, _), frames, n in zip(chunk, best.tolist(), lens.tolist()):
                out[k] = [self.vocab[c - 1] for c in ctc_collapse(frames[:n])]
        return out

    def save(self, path: str) -> None:
        """Atomic save of plain tensors and types (loads with weights_only=True)."""
        payload = dict(format_version=FORMAT_VERSION, spec=dataclasses.asdict(self.spec), vocab=self.vocab,
                       num_points=self.model.num_points, info=self.info,
                       state_dict={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write(path, lambda fh: torch.save(payload, fh))
        self.path = path

    @classmethod
    def load(cls, path: str) -> "Recognizer":
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"recogniser file {path} does not exist") from None
        except Exception as exc:  # torch.load raises many types for a damaged or foreign file
            raise CheckpointError(f"{path} is not a loadable recogniser ({type(exc).__name__}: {exc})") from None
        missing = [k for k in ("format_version", "spec", "vocab", "num_points", "state_dict") if k not in payload]
        if missing or payload["format_version"] != FORMAT_VERSION:
            raise CheckpointError(f"{path}: missing keys {missing} or format version "
                                  f"{payload.get('format_version')!r} != {FORMAT_VERSION}")
        # A file from before the augmentation existed was trained without it.
        spec = RecognizerSpec(**{"augment_smooth_max_frames": 1, "augment_jitter": 0.0, **payload["spec"]})
        model = PoseCTCRecognizer(payload["num_points"], len(payload["vocab"]), spec.width, spec.depth,
                                  spec.kernel_frames)
        model.load_state_dict(payload["state_dict"])
        recognizer = cls(model, payload["vocab"], spec, payload.get("info"))
        recognizer.path = path
        return recognizer


def train_recognizer(train, spec: RecognizerSpec = RecognizerSpec(), log_every_steps: int = 0) -> Recognizer:
    """Train on a Dataset (items with pose_xy, pose_visible, glosses) or on `collect_clips`' output."""
    data = train if isinstance(train, dict) else collect_clips(train, spec.max_train_clips)
    vocab = sorted({g for labels in data["glosses"] for g in labels})
    index = {g: i + 1 for i, g in enumerate(vocab)}
    targets = [torch.tensor([index[g] for g in labels]) for labels in data["glosses"]]
    num = len(targets)
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = PoseCTCRecognizer(skeleton.NUM_POINTS, len(vocab), spec.width, spec.depth, spec.kernel_frames)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    rest = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=spec.weight_decay), dict(params=rest, weight_decay=0.0)],
                            lr=spec.lr)
    model.train()
    start, loss = time.time(), torch.tensor(float("nan"))
    for step in range(spec.steps):
        warm = (step + 1) / max(spec.warmup_steps, 1) if step < spec.warmup_steps else 1.0
        progress = step / max(spec.steps - 1, 1)
        lr = spec.lr * min(warm, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.randint(num, (min(spec.batch_size, num),), generator=gen)
        lens = data["lengths"][batch]
        t = int(lens.max())
        xy, visible = data["xy"][batch, :t], data["visible"][batch, :t]
        logits = model(augment_clips(xy, visible, lens, spec, gen), visible, lens)
        log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, C), as F.ctc_loss wants
        tgt = [targets[i] for i in batch.tolist()]
        loss = F.ctc_loss(log_probs, torch.cat(tgt), lens, torch.tensor([len(x) for x in tgt]), blank=BLANK)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"recogniser loss {loss.item()} at step {step} (clips {batch.tolist()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every_steps and (step % log_every_steps == 0 or step == spec.steps - 1):
            print(f"recogniser step {step}/{spec.steps} ctc {loss.item():.4f} lr {lr:.2e} "
                  f"({time.time() - start:.0f} s)", flush=True)
    info = dict(num_train_clips=num, num_skipped=len(data["skipped"]), final_ctc_loss=loss.item(),
                train_seconds=round(time.time() - start, 1))
    return Recognizer(model, vocab, spec, info)


def recognizer_scores(recognizer: Recognizer, pose_xy, pose_visible, glosses: list[list[str]],
                      lengths=None) -> dict:
    """Back-translate keypoint clips ((B, T, J, 2) frame units + (B, T, J) visibility [+ lengths],
    or lists of clips) and score them against reference gloss lists: {gloss_wer, gloss_accuracy}
    (per-clip `evaluation.metrics` scores, averaged over clips, as evaluation/runner.py averages
    the exact back-translator's), predictions, num_clips and num_unreadable (clips that cannot be
    normalised; they read as no glosses, so they score WER 1)."""
    predictions = recognizer.decode(pose_xy, pose_visible, lengths)
    if len(predictions) != len(glosses):
        raise ValueError(f"{len(predictions)} clips but {len(glosses)} gloss lists")
    read = [p if p is not None else [] for p in predictions]
    n = max(len(read), 1)
    return dict(gloss_wer=sum(gloss_wer(p, list(r)) for p, r in zip(read, glosses)) / n,
                gloss_accuracy=sum(gloss_accuracy(p, list(r)) for p, r in zip(read, glosses)) / n,
                predictions=read, num_clips=len(read), num_unreadable=sum(p is None for p in predictions))


def dataset_scores(recognizer: Recognizer, dataset, max_clips: int = 0) -> dict:
    """`recognizer_scores` of a Dataset's own (ground-truth) keypoints: the recogniser's ceiling."""
    count = len(dataset) if max_clips <= 0 else min(max_clips, len(dataset))
    items = [dataset[i] for i in range(count)]
    return recognizer_scores(recognizer, [it["pose_xy"] for it in items], [it["pose_visible"] for it in items],
                             [list(it["glosses"]) for it in items])


if __name__ == "__main__":  # `python -m evaluation.recognizer`: the CLI lives beside the cache it fills
    from evaluation.recognizer_cache import main

    sys.exit(main())
