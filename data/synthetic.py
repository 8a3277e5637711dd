"""SyntheticSignDataset: captions -> procedurally rendered signer clips (data/signer.py).

Splits test compositional generalization:
- Every ordered sequence of 2 or 3 glosses is *held out* when a salted hash of its gloss string falls
  in the lowest HELD_OUT_FRACTION (~10 %). Membership is a pure function of the sequence, so it does
  not depend on split sizes or seeds.
- train: single glosses and non-held-out 2-/3-gloss sequences. Samples 0..len(GLOSSES)-1 are the
  single-gloss sentences, one per gloss, so every gloss is seen in training whenever
  num_samples >= len(GLOSSES).
- val: the train distribution (no held-out sequences) from a different seed stream, so its sample
  seeds are disjoint from train's.
- test: held-out 2-/3-gloss sequences only: each gloss was seen in training, the combination and
  order never were. `verify_splits` checks this.

Sample i of a split is a pure function of (seed, split, i): its sentence, caption and style come from
independent generators seeded by (seed, split id, i, stream), so they do not depend on call order or
on the worker process, and `captions`/`glosses_of` never render.
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
from torch.utils.data import Dataset

from data.signer import GLOSSES, make_caption, render_sentence

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_RERENDER_SPLIT_ID = 3  # seeds of `rerender`, disjoint from every split's
HELD_OUT_FRACTION = 0.1
SENTENCE_LENGTH_PROBS = {"train": (0.2, 0.4, 0.4), "val": (0.2, 0.4, 0.4), "test": (0.0, 0.5, 0.5)}
_SENTENCE_STREAM, _STYLE_STREAM, _CAPTION_STREAM = 0, 1, 2
MIN_FRAMES = 3  # a sentence has up to 3 glosses, one frame at least each
MIN_FRAME_SIZE_PX = 8  # the signer's body and hands are drawn at no smaller size


def is_held_out(glosses: list[str] | tuple[str, ...]) -> bool:
    """Whether this ordered gloss sequence is reserved for the test split (never for 1 gloss)."""
    if len(glosses) < 2:
        return False
    digest = hashlib.blake2b("|".join(glosses).encode(), digest_size=8, key=b"text2sign-heldout").digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64 < HELD_OUT_FRACTION


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2 ** 63, SPLIT_IDS[split], index, stream])


def sentence_of(seed: int, split: str, index: int) -> list[str]:
    """The gloss sentence of sample `index` of `split` (see the module docstring)."""
    if split == "train" and index < len(GLOSSES):
        return [GLOSSES[index]]
    rng = _rng(seed, split, index, _SENTENCE_STREAM)
    length = 1 + int(rng.choice(3, p=SENTENCE_LENGTH_PROBS[split]))
    want_held_out = split == "test"
    while True:  # rejection: ~10 draws for test, ~1.2 for train/val
        picks = rng.integers(len(GLOSSES), size=length)
        if len(set(picks.tolist())) < length:  # no gloss twice in one sentence
            continue
        glosses = [GLOSSES[g] for g in picks]
        if is_held_out(glosses) == want_held_out:
            return glosses


class SyntheticSignDataset(Dataset):
    """Items: video float32 (3, T, H, W) in [-1, 1]; caption str; glosses list[str]; hand_xy float32
    (T, 2, 2) [right, left] hand centres in [0, 1]; hand_visible bool (T, 2) (the glove unoccluded);
    pose_xy float32 (T, J, 2) and pose_visible bool (T, J): the reduced skeleton (data/skeleton.py);
    index int."""

    def __init__(self, split: str, num_samples: int, num_frames: int, frame_size_px: int, seed: int):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        if num_samples < 1 or num_frames < MIN_FRAMES or frame_size_px < MIN_FRAME_SIZE_PX:
            raise ValueError(f"need num_samples >= 1, num_frames >= {MIN_FRAMES} (one per gloss), "
                             f"frame_size_px >= {MIN_FRAME_SIZE_PX}; "
                             f"got {num_samples}, {num_frames}, {frame_size_px}")
        self.split, self.num_samples, self.seed = split, num_samples, seed
        self.num_frames, self.frame_size_px = num_frames, frame_size_px

    def __len__(self) -> int:
        return self.num_samples

    def glosses_of(self, index: int) -> list[str]:
        return sentence_of(self.seed, self.split, self._check(index))

    def caption_of(self, index: int, glosses: list[str] | None = None) -> str:
        glosses = self.glosses_of(index) if glosses is None else glosses
        return make_caption(glosses, _rng(self.seed, self.split, index, _CAPTION_STREAM))

    @functools.cached_property
    def captions(self) -> list[str]:
        """All captions of the split, in index order (no rendering; the tokenizer reads these)."""
        return [self.caption_of(i) for i in range(self.num_samples)]

    def _check(self, index: int) -> int:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} out of range for the {self.split} split of {self.num_samples}")
        return int(index)

    def __getitem__(self, index: int) -> dict:
        glosses = self.glosses_of(index)
        out = render_sentence(glosses, self.num_frames, self.frame_size_px,
                              _rng(self.seed, self.split, index, _STYLE_STREAM))
        # numpy, not torch ops: tiny torch ops pay thread-pool overhead in the main process
        video = torch.from_numpy(out["video"].transpose(3, 0, 1, 2).astype(np.float32) / np.float32(127.5) - 1)
        return dict(video=video, caption=self.caption_of(index, glosses), glosses=glosses,
                    hand_xy=torch.from_numpy(out["hand_xy"]), hand_visible=torch.from_numpy(out["hand_visible"]),
                    pose_xy=torch.from_numpy(out["pose_xy"]), pose_visible=torch.from_numpy(out["pose_visible"]),
                    index=int(index))


    def rerender(self, index: int) -> torch.Tensor:
        """Another rendering of sample `index`'s sentence: same glosses, an independent style and
        timing/amplitude jitter. Video float32 (3, T, H, W) in [-1, 1]: what a perfect text-to-sign
        model could make, since the text fixes neither (the realistic ceiling of the metrics)."""
        return self.rerender_item(index)["video"]

    def rerender_item(self, index: int) -> dict:
        """`rerender`'s clip with its skeleton: video, pose_xy (T, J, 2), pose_visible (T, J)."""
        rng = np.random.default_rng([self.seed % 2 ** 63, _RERENDER_SPLIT_ID, SPLIT_IDS[self.split], index])
        out = render_sentence(self.glosses_of(index), self.num_frames, self.frame_size_px, rng)
        video = torch.from_numpy(out["video"].transpose(3, 0, 1, 2).astype(np.float32) / np.float32(127.5) - 1)
        return dict(video=video, pose_xy=torch.from_numpy(out["pose_xy"]),
                    pose_visible=torch.from_numpy(out["pose_visible"]))


def verify_splits(train: SyntheticSignDataset, test: SyntheticSignDataset) -> dict:
    """Raise ValueError unless every test sentence is a held-out multi-gloss sequence absent from
    train, and (when train has >= len(GLOSSES) samples) every gloss occurs in train. Returns counts."""
    train_seqs = {tuple(train.glosses_of(i)) for i in range(len(train))}
    for i in range(len(test)):
        seq = tuple(test.glosses_of(i))
        if len(seq) < 2 or not is_held_out(seq) or seq in train_seqs:
            raise ValueError(f"test sample {i} {seq} is not a held-out combination unseen in train")
    seen = {g for seq in train_seqs for g in seq}
    if len(train) >= len(GLOSSES) and seen != set(GLOSSES):
        raise ValueError(f"glosses never seen in train: {sorted(set(GLOSSES) - seen)}")
    return dict(train_sequences=len(train_seqs), test_samples=len(test), glosses_seen=len(seen))
