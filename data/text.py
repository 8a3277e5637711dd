"""Word-level tokenizer built from training captions, and the collate that pads text.

Token ids: 0 = padding, 1 = unknown word, 2.. = words seen in training captions (sorted, so the
vocabulary is a pure function of the caption set). The vocabulary is saved in every checkpoint.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import torch

PAD, UNK = 0, 1
_WORD = re.compile(r"[a-z0-9äöüß']+")


def normalize_caption(text: str) -> str:
    """Lower-case, punctuation stripped (apostrophes kept), single spaces."""
    return " ".join(_WORD.findall(text.lower()))


class Tokenizer:
    def __init__(self, words: Iterable[str]):
        self.words = ["<pad>", "<unk>"] + [w for w in words if w not in ("<pad>", "<unk>")]
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> "Tokenizer":
        vocab = sorted({w for c in captions for w in normalize_caption(c).split()})
        return cls(vocab)

    @classmethod
    def from_state(cls, words: list[str]) -> "Tokenizer":
        if words[:2] != ["<pad>", "<unk>"]:
            raise ValueError("tokenizer state must start with '<pad>', '<unk>'")
        return cls(words[2:])

    def state(self) -> list[str]:
        return list(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Word ids of `text`, truncated to max_len (unknown words -> UNK)."""
        return [self.index.get(w, UNK) for w in normalize_caption(text).split()][:max_len]

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in normalize_caption(text).split() if w not in self.index]

    def batch(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, L) long, mask (B, L) bool) padded to the longest text (at least 1)."""
        ids = [self.encode(t, max_len) for t in texts]
        length = max(1, max(len(i) for i in ids))
        tokens = torch.zeros(len(ids), length, dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return tokens, tokens != PAD


class Collate:
    """Stack tensors, keep other fields as lists, and tokenize `caption` into tokens/token_mask."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
        batch["tokens"], batch["token_mask"] = self.tokenizer.batch(batch["caption"], self.max_len)
        return batch
