"""An in-domain video distance (FVD's recipe, built from what this machine can have).

FVD (Unterthiner et al. 2018) compares the feature statistics of generated and real clips in a
video classifier's feature space (I3D trained on Kinetics). No such network can be downloaded here,
so each dataset gets its own: a small 3D-conv multi-label classifier of the clip's glosses (the
synthetic signer; datasets without gloss labels: the caption's words), trained once on ground-truth
training clips, deterministically (fixed seed, fixed data order, CPU), and cached on disk under a
key of everything that shapes it (dataset, split settings, frame size, recipe, a fingerprint of the
training clips); the default demo's ships in evaluation/encoders/. Its penultimate layer and the
spread of each conv block's channels, standardised by the training clips' statistics, are the
feature space (`VideoEncoder.features`).

    encoder = load_or_train_encoder(cfg, log=print)        # trains once per dataset, then loads
    feats = clip_features(encoder, videos)                  # (N, D) from (N, 3, T, H, W) in [-1, 1]
    kernel_video_distance(feats_gen, feats_ref)             # the reported `fvd`

The distance is the kernel form (KVD, the same paper's second metric; KID's estimator, Bińkowski
et al. 2018): unbiased MMD² with the cubic polynomial kernel. With the few dozen clips an evaluation
can afford, the Fréchet form's bias (it grows like D/N) would dominate the figure; the unbiased
estimate is ~0 for two draws of one distribution, whatever N, so a figure is comparable across clip
counts and its floor is the data's own (the `ground_truth` condition).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoint import CheckpointError, atomic_write
from data import derived_cache_dir
from data.text import split_words

# What shapes the encoder; any change here is part of the cache key and retrains it. Sized so the
# synthetic default (16 frames x 32 px) trains in well under a minute on 2 cores.
ENCODER_RECIPE: dict[str, Any] = dict(
    version=2, channels=(16, 32, 64), feature_dim=64, train_clips=4096, heldout_clips=256, epochs=6,
    batch_size=32, lr=3e-3, weight_decay=1e-4, seed=0, max_vocab=512)
# Where the default demo's encoder ships, under the cache's key (why and how: encoders/README.md).
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "encoders")

def clip_labels(item: dict[str, Any]) -> list[str]:
    """What the encoder learns to recognise in a clip: its glosses where the data has them (the
    synthetic signer), else the lower-cased words of its caption (PHOENIX `orth` captions are
    glosses, WLASL's caption is its gloss word)."""
    if "glosses" in item:
        return sorted(set(item["glosses"]))
    return sorted(set(split_words(item["caption"])))


class VideoEncoder(nn.Module):
    """3D-conv multi-label clip classifier whose activations are the distance's feature space.

    forward: video (B, 3, T, H, W) in [-1, 1] -> logits (B, num_labels). features: -> (B, feature_dim
    + sum(channels)): the embedding the head reads (which signs are made, where, how they move) and
    the spread over space and time of every conv block's channels (how the clip looks: a gloss
    classifier's embedding is blind to blur and smeared arms, which these statistics see).
    Three strided conv blocks (space halved each time, time from the second on), then a small fixed
    grid (2 x 4 x 4) flattened, so where the hands are stays in the embedding, not only what moves."""

    def __init__(self, num_labels: int, channels: Sequence[int] = (16, 32, 64), feature_dim: int = 64):
        super().__init__()
        blocks, c_in = [], 3
        for i, c in enumerate(channels):
            blocks.append(nn.Sequential(nn.Conv3d(c_in, c, 3, stride=(1 if i == 0 else 2, 2, 2), padding=1),
                                        nn.GroupNorm(min(4, c), c), nn.SiLU()))
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.grid = (2, 4, 4)
        self.embed = nn.Linear(c_in * int(np.prod(self.grid)), feature_dim)
        self.head = nn.Linear(feature_dim, num_labels)

    def _run(self, video: torch.Tensor, spreads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video (B, 3, T, H, W), got {tuple(video.shape)}")
        h, stds = video, []
        for block in self.blocks:
            h = block(h)
            if spreads:  # features only: the classifier's training never reads them (a fifth of its time)
                stds.append(h.flatten(2).std(2))
        return self.embed(F.adaptive_avg_pool3d(h, self.grid).flatten(1)), stds

    def features(self, video: torch.Tensor) -> torch.Tensor:
        embedding, spreads = self._run(video, spreads=True)
        return torch.cat([embedding, *spreads], 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.head(F.silu(self._run(video, spreads=False)[0]))


class TrainedEncoder:
    """A trained VideoEncoder with its label vocabulary and feature standardisation."""

    def __init__(self, model: VideoEncoder, vocab: list[str], feature_mean: torch.Tensor,
                 feature_std: torch.Tensor, info: dict[str, Any]):
        self.model, self.vocab, self.info = model.eval(), vocab, info
        self.feature_mean, self.feature_std = feature_mean, feature_std


@torch.no_grad()
def clip_features(encoder: TrainedEncoder, videos: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, 3, T, H, W) in [-1, 1] (float, or uint8 (N, T, H, W, 3)) -> standardised features (N, D)
    float64."""
    out = []
    for start in range(0, len(videos), batch_size):
        out.append(encoder.model.features(_as_float(videos[start:start + batch_size])).double())
    feats = torch.cat(out) if out else torch.zeros(0, encoder.feature_mean.numel(), dtype=torch.float64)
    return (feats - encoder.feature_mean) / encoder.feature_std


@torch.no_grad()
def dataset_features(encoder: TrainedEncoder, dataset, indices: Sequence[int], batch_size: int = 64) -> torch.Tensor:
    """Standardised features (len(indices), D) of dataset[i]["video"], loaded a batch at a time (a
    large reference pool never sits in memory as float video)."""
    parts = [clip_features(encoder, torch.stack([dataset[i]["video"] for i in indices[s:s + batch_size]]))
             for s in range(0, len(indices), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, encoder.feature_mean.numel(), dtype=torch.float64)


def kernel_video_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Unbiased MMD² between two feature sets (N, D) and (M, D) (N, M >= 2) under the polynomial
    kernel k(x, y) = (x·y / D + 1)³ (KID's). ~0 (either sign) for two draws of one distribution;
    grows as the distributions part."""
    a, b = feats_a.double(), feats_b.double()
    n, m, d = len(a), len(b), a.shape[1]
    if n < 2 or m < 2 or b.shape[1] != d:
        raise ValueError(f"need two (>= 2, D) feature sets of one width, got {tuple(a.shape)} and {tuple(b.shape)}")
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    return float((k_aa.sum() - k_aa.diagonal().sum()) / (n * (n - 1))
                 + (k_bb.sum() - k_bb.diagonal().sum()) / (m * (m - 1)) - 2 * k_ab.mean())


def _as_float(videos: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) or float (B, 3, T, H, W) in [-1, 1] -> float32 (B, 3, T, H, W)."""
    if videos.dtype == torch.uint8:
        return videos.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0
    return videos.float()


def _as_uint8(video: torch.Tensor) -> torch.Tensor:
    """float (3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3): a quarter of the memory while training."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def _spread(count: int, total: int) -> list[int]:
    """`count` indices spread evenly over range(total) (real splits are ordered by video/signer)."""
    count = min(count, total)
    return [i * total // count for i in range(count)]


class _ClipsAndLabels(torch.utils.data.Dataset):
    """dataset[indices[j]] as (uint8 clip, labels): what a loader worker hands back."""

    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, list[str]]:
        item = self.dataset[self.indices[j]]
        return _as_uint8(item["video"]), clip_labels(item)


def _as_list(batch: list) -> list:
    return batch


def _load_clips(dataset, indices: list[int], workers: int | None = None) -> tuple[torch.Tensor, list[list[str]]]:
    """(uint8 clips (N, T, H, W, 3), label lists) of dataset[indices], in order. Thousands of clips
    are rendered (or decoded) while nothing else runs: a worker per core loads them (the
    encoder's 4,352 synthetic clips: 7.5 s on one core; docs/performance.md, round 15)."""
    if workers is None:  # a few clips load faster than workers start
        workers = min(2, len(os.sched_getaffinity(0))) if len(indices) > 256 else 0
    # Its own generator: the workers' base seed must not be drawn from (and move) the caller's RNG.
    loader = torch.utils.data.DataLoader(_ClipsAndLabels(dataset, indices), batch_size=64, num_workers=workers,
                                         collate_fn=_as_list, generator=torch.Generator().manual_seed(0))
    pairs = [pair for batch in loader for pair in batch]
    return torch.stack([clip for clip, _ in pairs]), [labels for _, labels in pairs]


def _multi_hot(labels: list[list[str]], vocab: list[str]) -> torch.Tensor:
    pos = {w: j for j, w in enumerate(vocab)}
    out = torch.zeros(len(labels), len(vocab))
    for i, words in enumerate(labels):
        for w in words:
            if w in pos:
                out[i, pos[w]] = 1.0
    return out


def build_vocab(labels: list[list[str]], max_vocab: int) -> list[str]:
    """The `max_vocab` labels in most clips (ties alphabetical)."""
    counts = Counter(w for words in labels for w in words)
    return sorted(counts, key=lambda w: (-counts[w], w))[:max_vocab]


def train_encoder(train_clips: torch.Tensor, train_labels: list[list[str]], recipe: dict[str, Any],
                  log: Callable[[str], None] = print) -> TrainedEncoder:
    """Train a VideoEncoder on uint8 clips (N, T, H, W, 3) and their label lists. Deterministic: the
    init and the data order come from generators seeded by recipe["seed"]."""
    vocab = build_vocab(train_labels, recipe["max_vocab"])
    if not vocab:
        raise ValueError(f"error: the {len(train_labels)} training clips have no glosses or caption words; "
                         "the video encoder has nothing to learn")
    targets = _multi_hot(train_labels, vocab)
    torch.manual_seed(recipe["seed"])  # parameter init; the caller's RNG state is restored below
    model = VideoEncoder(len(vocab), recipe["channels"], recipe["feature_dim"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    n, bs = len(train_clips), recipe["batch_size"]
    total_steps = recipe["epochs"] * ((n + bs - 1) // bs)
    step = 0
    model.train()
    for _ in range(recipe["epochs"]):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            lr = recipe["lr"] * 0.5 * (1 + np.cos(np.pi * step / total_steps))  # cosine to 0
            for group in opt.param_groups:
                group["lr"] = lr
            loss = F.binary_cross_entropy_with_logits(model(_as_float(train_clips[idx])), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    model.eval()
    with torch.no_grad():
        feats = torch.cat([model.features(_as_float(train_clips[s:s + 128])).double() for s in range(0, n, 128)])
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    return TrainedEncoder(model, vocab, mean, std, dict(final_train_loss=float(loss.detach()), train_clips=n))


@torch.no_grad()
def label_accuracy(encoder: TrainedEncoder, clips: torch.Tensor, labels: list[list[str]]) -> dict[str, float]:
    """Exact-set accuracy (every label right, threshold 0.5) and micro-F1 of the encoder on clips."""
    logits = torch.cat([encoder.model(_as_float(clips[s:s + 128])) for s in range(0, len(clips), 128)])
    pred, truth = logits > 0, _multi_hot(labels, encoder.vocab) > 0
    tp = (pred & truth).sum().item()
    f1 = 2 * tp / max(1, pred.sum().item() + truth.sum().item())
    return dict(exact_set_accuracy=float((pred == truth).all(1).float().mean()), micro_f1=float(f1))


def _fingerprint(dataset, indices: list[int]) -> str:
    """Hash of the first training clips' pixels and labels: a changed renderer or dataset retrains.
    A few clips only, so finding a cached encoder costs no more than loading it."""
    clips, labels = _load_clips(dataset, indices[:8])
    h = hashlib.sha256(clips.numpy().tobytes())
    h.update(json.dumps(labels).encode())
    return h.hexdigest()[:16]


def _datasets(cfg, recipe: dict[str, Any]):
    """(train, held-out) datasets the encoder is trained and checked on: ground truth only."""
    if cfg.dataset == "synthetic":
        from data.synthetic import SyntheticSignDataset

        make = lambda split, n: SyntheticSignDataset(split, n, cfg.num_frames, cfg.frame_size_px, cfg.seed)  # noqa: E731
        return make("train", cfg.num_train_samples), make("val", recipe["heldout_clips"])
    from data import build_dataset

    return build_dataset(cfg, "train"), build_dataset(cfg, "val")


def load_or_train_encoder(cfg, log: Callable[[str], None] = print, recipe: dict[str, Any] | None = None,
                          cache_dir: str | None = None) -> TrainedEncoder:
    """The dataset's video encoder: loaded from the cache if trained before, else trained on
    ground-truth training clips (its held-out accuracy logged) and saved atomically."""
    recipe = dict(ENCODER_RECIPE if recipe is None else recipe)
    train_set, heldout_set = _datasets(cfg, recipe)
    train_indices = _spread(recipe["train_clips"], len(train_set))
    shape = dict(dataset=cfg.dataset, data_root=os.path.abspath(cfg.data_root) if cfg.data_root else "",
                 seed=cfg.seed, num_frames=cfg.num_frames, frame_size_px=cfg.frame_size_px,
                 num_train_samples=len(train_set), sample_fps=getattr(cfg, "sample_fps", 0.0),
                 text_field=getattr(cfg, "text_field", ""), signer_disjoint=getattr(cfg, "signer_disjoint", False),
                 recipe=recipe, data=_fingerprint(train_set, train_indices))
    key = hashlib.sha256(json.dumps(shape, sort_keys=True, default=list).encode()).hexdigest()[:16]
    folder = cache_dir or derived_cache_dir(cfg)
    path = os.path.join(folder, f"video_encoder_{cfg.dataset}_{key}.pt")
    if os.path.isfile(path):
        return _load(path)
    shipped = os.path.join(SHIPPED_DIR, os.path.basename(path))
    if os.path.isfile(shipped):
        encoder = _load(shipped)
        log(f"video encoder: shipped with the code (evaluation/encoders/{os.path.basename(shipped)}), "
            f"{_quality(encoder)}")
        return encoder
    train_clips, train_labels = _load_clips(train_set, train_indices)
    log(f"training the video encoder for fvd on {len(train_clips)} {cfg.dataset} ground-truth training "
        f"clips (once; cached as {path}) ...")
    rng_state = torch.get_rng_state()
    started = time.time()
    try:
        with torch.enable_grad():  # evaluate.py samples under no_grad
            encoder = train_encoder(train_clips, train_labels, recipe, log)
    finally:
        torch.set_rng_state(rng_state)  # training must not move the caller's sampling noise
    held_clips, held_labels = _load_clips(heldout_set, _spread(recipe["heldout_clips"], len(heldout_set)))
    acc = label_accuracy(encoder, held_clips, held_labels)
    encoder.info.update(acc, heldout_clips=len(held_clips), train_s=time.time() - started, key=key)
    log(f"video encoder: {_quality(encoder)} ({encoder.info['train_s']:.0f} s)")
    os.makedirs(folder, exist_ok=True)
    state = dict(state=encoder.model.state_dict(), vocab=encoder.vocab, feature_mean=encoder.feature_mean,
                 feature_std=encoder.feature_std, recipe=recipe, shape=json.dumps(shape, default=list),
                 info=encoder.info)
    atomic_write(path, lambda fh: torch.save(state, fh))
    return encoder


def _quality(encoder: TrainedEncoder) -> str:
    info = encoder.info
    return (f"{len(encoder.vocab)} labels, held-out ground truth ({info['heldout_clips']} clips): exact-set accuracy "
            f"{info['exact_set_accuracy']:.3f}, micro-F1 {info['micro_f1']:.3f}")


def _load(path: str) -> TrainedEncoder:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        recipe = state["recipe"]
        model = VideoEncoder(len(state["vocab"]), recipe["channels"], recipe["feature_dim"])
        model.load_state_dict(state["state"])
    except Exception as exc:  # torch.load raises many types for a damaged or foreign file
        raise CheckpointError(f"video encoder cache {path} could not be loaded ({type(exc).__name__}: {exc}); "
                              "delete it to retrain") from None
    return TrainedEncoder(model, list(state["vocab"]), state["feature_mean"], state["feature_std"], state["info"])
