"""The training-time view of a built cache: memory-mapped uint8 clips -> fixed-length [-1, 1] windows."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from data.real.cache import CacheIndex
from data.real.common import resample_indices


class CachedClipDataset(Dataset):
    """Items: {video: float32 (3, T, S, S) in [-1, 1], caption: str, index: int[, signer: str]
    [, glosses: list[str]][, pose_xy: float32 (T, J, 2) in frame units, pose_visible: bool (T, J)]}.

    `glosses` where the release has gloss labels (with_glosses); the reduced skeleton
    (data/skeleton.py) where the cache holds keypoints, windowed exactly like the frames.

    Clips longer than T = num_frames give a T-frame window: random in training, drawn from a
    generator seeded by (seed, epoch, index) so a resumed run sees the same windows (call
    set_epoch), centred in evaluation. Shorter clips are stretched to T frames by repeating frames.
    """

    def __init__(self, index: CacheIndex, num_frames: int, train: bool, seed: int, with_signers: bool,
                 with_glosses: bool = False):
        self.index, self.num_frames, self.train, self.seed = index, num_frames, train, seed
        self.with_signers, self.with_glosses = with_signers, with_glosses
        self.captions: list[str] = list(index.captions)
        self.epoch = 0
        self._frames: np.ndarray | None = None  # opened lazily, once per process
        self._pose: np.ndarray | None = None

    @property
    def has_pose(self) -> bool:
        return bool(self.index.pose_path)

    def __getstate__(self) -> dict:
        # DataLoader workers reopen the memory maps instead of receiving pickled copies.
        return {**self.__dict__, "_frames": None, "_pose": None}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.captions)

    def frame_indices(self, index: int) -> np.ndarray:
        """(T,) frame positions inside clip `index` (relative to its first frame)."""
        length, t = int(self.index.lengths[index]), self.num_frames
        if length < t:
            return resample_indices(length, t)
        if self.train:
            rng = np.random.default_rng((self.seed % 2**32, self.epoch, index))
            start = int(rng.integers(0, length - t + 1))
        else:
            start = (length - t) // 2
        return np.arange(start, start + t)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        if self._frames is None:
            self._frames = np.load(self.index.frames_path, mmap_mode="r")
        rows = self.index.offsets[index] + self.frame_indices(index)
        frames = self._frames[rows]  # (T, S, S, 3)
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        item = {"video": video, "caption": self.captions[index], "index": index}
        if self.with_signers:
            item["signer"] = self.index.signers[index]
        if self.with_glosses:
            item["glosses"] = list(self.index.glosses[index])
        if self.has_pose:
            if self._pose is None:
                self._pose = np.load(self.index.pose_path, mmap_mode="r")
            pose = np.array(self._pose[rows], np.float32)  # (T, J, 3): x, y, visible
            item["pose_xy"] = torch.from_numpy(np.ascontiguousarray(pose[..., :2]))
            item["pose_visible"] = torch.from_numpy(pose[..., 2] > 0.5)
        return item
