"""Datasets, the step-indexed batch sampler and the loader used by training.

Data order is a pure function of (seed, step): batch `step` holds global sample positions
step*B … step*B + B - 1, position p maps to epoch p // N and to index perm_epoch[p % N] of a
per-epoch permutation seeded by (seed, epoch). So the data position *is* the step: resuming at step
k reproduces exactly the batches an uninterrupted run would see, across epoch boundaries, with any
number of DataLoader workers, and torchrun ranks take disjoint slices of the same global batch.
"""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from data.real.common import DatasetError
from data.text import Collate, Tokenizer

if TYPE_CHECKING:  # config imports the model registry, whose builder reads data/skeleton.py
    from config import Config


def build_dataset(cfg: Config, split: str) -> Dataset:
    """The dataset of `cfg.dataset` for split train|val|test (items: dict with video, caption, …)."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if cfg.dataset == "synthetic":
        from data.synthetic import SyntheticSignDataset

        num = cfg.num_train_samples if split == "train" else cfg.num_eval_samples
        return SyntheticSignDataset(split=split, num_samples=num, num_frames=cfg.num_frames,
                                    frame_size_px=cfg.frame_size_px, seed=cfg.seed)
    from data.real import build_real_dataset

    return build_real_dataset(cfg, split)


def derived_cache_dir(cfg: Config) -> str:
    """Where files trained from a dataset's ground truth are kept (the video encoder of the fvd
    metric, the pose recogniser): real data beside its preprocessing cache, synthetic data under
    <output_dir>/.text2sign_cache. Each file is keyed by what shapes it."""
    if cfg.dataset == "synthetic":
        return os.path.join(cfg.output_dir, ".text2sign_cache")
    return cfg.cache_dir or os.path.join(cfg.data_root, ".text2sign_cache")


def check_dataset(cfg: Config, dataset: Dataset) -> None:
    """Fail (DatasetError) before any training step unless sample 0 has the shape and the keys the
    config needs."""
    first = dataset[0]
    expected = (3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    if tuple(first["video"].shape) != expected:
        raise DatasetError(f"dataset '{cfg.dataset}' sample 0 has video shape {tuple(first['video'].shape)}, "
                         f"expected {expected}")
    if cfg.pose_cond and "pose_xy" not in first:
        raise DatasetError(f"dataset '{cfg.dataset}' sample 0 has no keypoints (pose_xy), which the pose "
                         "stage (pose_cond) trains on; use --preset no_keypoints for data without them")


class StepSampler(Sampler[list]):
    """Yields this rank's index list for every micro-batch, starting at `start_step`.

    Items are (index, epoch) pairs so datasets with per-epoch randomness (random clip windows) get
    the epoch in the worker process too (see EpochIndexed).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, start_step: int = 0,
                 grad_accum_steps: int = 1, rank: int = 0, world_size: int = 1):
        per_rank = batch_size // (grad_accum_steps * world_size)
        if per_rank * grad_accum_steps * world_size != batch_size or per_rank == 0:
            raise ValueError(f"batch_size={batch_size} must split evenly into grad_accum_steps="
                             f"{grad_accum_steps} x world_size={world_size} micro-batches")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.start_step, self.accum, self.rank, self.world = start_step, grad_accum_steps, rank, world_size
        self.micro = per_rank
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.num_samples, generator=gen), epoch
        return self._perm

    def indices(self, step: int, micro_step: int) -> list[tuple[int, int]]:
        """(index, epoch) pairs of this rank's part of micro-batch `micro_step` of `step`."""
        first = step * self.batch_size + (micro_step * self.world + self.rank) * self.micro
        out = []
        for pos in range(first, first + self.micro):
            epoch = pos // self.num_samples
            out.append((int(self.permutation(epoch)[pos % self.num_samples]), epoch))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            for micro_step in range(self.accum):
                yield self.indices(step, micro_step)
            step += 1


class EpochIndexed(Dataset):
    """Adapter: item (index, epoch) -> dataset[index] after dataset.set_epoch(epoch) if it has one."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, epoch = item
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def _ignore_stop_signals(worker_id: int) -> None:
    """Ctrl-C and SIGTERM reach the whole process group; only the main process acts on them (it saves
    at the next step boundary, then shuts its workers down). A worker killed first would crash the
    run without a checkpoint while the main process waits for its batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_train_loader(cfg: Config, dataset: Dataset, tokenizer: Tokenizer, start_step: int,
                      rank: int = 0, world_size: int = 1) -> DataLoader:
    """An endless loader of this rank's micro-batches from `start_step` on."""
    sampler = StepSampler(len(dataset), cfg.batch_size, cfg.seed, start_step, cfg.grad_accum_steps,
                          rank, world_size)
    return DataLoader(
        EpochIndexed(dataset), batch_sampler=sampler, num_workers=cfg.num_workers,
        collate_fn=Collate(tokenizer, cfg.max_text_len_tokens),
        persistent_workers=cfg.num_workers > 0,
        # The loader's own generator keeps it from drawing on the global torch RNG (exact resume).
        generator=torch.Generator().manual_seed(cfg.seed + 7919 * rank),
        prefetch_factor=4 if cfg.num_workers > 0 else None, worker_init_fn=_ignore_stop_signals)
