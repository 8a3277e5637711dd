"""Caption normalisation, the two tokenizers (words, subwords), prompt checks and the text collate.

Normalisation (`normalize_caption`): NFKC, casefold, then words = runs of Unicode letters, combining
marks and digits of any script, an apostrophe kept only inside a word ("don't", not "'quoted'");
everything else separates words. Captions of every script survive ("déjà vu señor café", Cyrillic,
Chinese), and full-width or ligature forms fold to their plain letters.

Two tokenizers share one interface: `encode(text, max_len)`, `batch(texts, max_len)`,
`unknown_words(text)`, `state()` / `tokenizer_from_state(state)`, `len()`, `vocab` (id -> token) and
`blank_ids` (ids that carry no known text).
Ids: 0 = padding, 1 = unknown; the model's embedding has `len(tokenizer)` rows.
- `Tokenizer`, words: the default, and what the synthetic signer's captions need (88 words, every
  one of them in the training captions). A word is a whitespace word of the normalised caption,
  except in scripts written without spaces (Han, Hiragana, Katakana), where each character is a
  word: "我爱你" -> 我 / 爱 / 你. The vocabulary is sorted, so it is a pure function of the captions.
- `SubwordTokenizer`, BPE (`tokenizers` package) trained on the training captions to a fixed
  vocabulary size: for real captions (How2Sign's English, PHOENIX's German), whose test
  sentences hold words the training captions never had. An unseen word of known letters still
  encodes to known pieces; only a character never seen in training is unknown. BPE rather than
  unigram: deterministic, where unigram's float EM is not, and shorter sequences
  (scripts/tokenizer_choice.py measures both; the table is in docs/datasets.md).

Both vocabularies are built from captions cut to their first `max_len` words (the model only ever
reads that many tokens, and every word is at least one token), so one huge caption cannot grow the
vocabulary or the model.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata
import warnings
from typing import Any, Iterable, Union

import torch

PAD, UNK = 0, 1
SPECIAL_TOKENS = ("<pad>", "<unk>")
TOKENIZER_KINDS = ("word", "bpe")
# Scripts written without spaces between words: each character is one word for the word tokenizer.
_NO_SPACE_SCRIPT = ("\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                    "\U00020000-\U0003ffff")
_SPLIT_WORD = re.compile(f"[{_NO_SPACE_SCRIPT}]|[^\\s{_NO_SPACE_SCRIPT}]+")
# Longest BPE piece, "▁" included (SentencePiece's default); bounds the characters max_len pieces span.
_MAX_PIECE_CHARS = 16
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "`": "'", "_": " "})


@functools.lru_cache(maxsize=1)
def _word_pattern() -> re.Pattern:
    """Letters and digits (`\\w` less `_`) plus combining marks, which `\\w` leaves out although
    Devanagari, Thai or decomposed Latin words need them; apostrophes only between such runs."""
    marks = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M")
    run = f"[\\w{re.escape(marks)}]+"
    return re.compile(f"{run}(?:'{run})*")


def normalize_caption(text: str) -> str:
    """NFKC, casefolded, words of any script joined by single spaces (punctuation dropped)."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(_word_pattern().findall(text.translate(_APOSTROPHES)))


def split_words(text: str) -> list[str]:
    """The word tokenizer's words of `text`: normalised whitespace words, no-space scripts split
    into characters ("ich liebe 我爱你" -> ich, liebe, 我, 爱, 你)."""
    return _SPLIT_WORD.findall(normalize_caption(text))


def _subword_text(text: str, max_len: int | None) -> str:
    """The normalised text cut to its first max_len whitespace words and max_len pieces' worth of
    characters (a piece spans at most _MAX_PIECE_CHARS): the model reads no more, and BPE training
    on one unbroken megabyte of characters would not finish."""
    text = normalize_caption(text)
    if max_len is None or len(text) <= max_len:
        return text
    return " ".join(text.split(" ", max_len)[:max_len])[: max_len * _MAX_PIECE_CHARS]


class _TextBatching:
    """`batch` and `__len__`, shared by both tokenizers."""
    vocab: list[str]
    UNIT: str  # what one token is, for messages
    blank_ids: frozenset[int] = frozenset({UNK})  # ids that carry no known text

    def encode(self, text: str, max_len: int) -> list[int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.vocab)

    def batch(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (B, L) long, mask (B, L) bool) padded to the longest text (at least 1)."""
        ids = [self.encode(t, max_len) for t in texts]
        length = max(1, max(len(i) for i in ids))
        tokens = torch.zeros(len(ids), length, dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return tokens, tokens != PAD


class Tokenizer(_TextBatching):
    """Word-level tokenizer (ids 2.. = the sorted training words)."""
    UNIT = "word"

    def __init__(self, words: Iterable[str]):
        self.words = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.index = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab(self) -> list[str]:
        return self.words

    @classmethod
    def from_captions(cls, captions: Iterable[str], max_len: int | None = None) -> "Tokenizer":
        """Vocabulary of the captions' first max_len words each (None: every word)."""
        return cls(sorted({w for c in captions for w in split_words(c)[:max_len]}))

    @classmethod
    def from_state(cls, words: list[str]) -> "Tokenizer":
        if not isinstance(words, list) or words[:2] != list(SPECIAL_TOKENS):
            raise ValueError("checkpoint 'tokenizer': a word tokenizer state is a list starting "
                             "with '<pad>', '<unk>'")
        return cls(words[2:])

    def state(self) -> list[str]:
        return list(self.words)

    def encode(self, text: str, max_len: int) -> list[int]:
        """Word ids of `text`, truncated to max_len (unknown words -> UNK)."""
        return [self.index.get(w, UNK) for w in split_words(text)[:max_len]]

    def unknown_words(self, text: str) -> list[str]:
        return [w for w in split_words(text) if w not in self.index]


class SubwordTokenizer(_TextBatching):
    """BPE over normalised captions: `▁` marks a word start (SentencePiece's Metaspace), unseen
    characters become UNK (a run of them one UNK). State: the `tokenizers` JSON string."""
    KIND, UNIT = "bpe", "piece"

    def __init__(self, model_json: str):
        from tokenizers import Tokenizer as HFTokenizer  # imported here: only subword runs need it
        try:
            self._hf = HFTokenizer.from_str(model_json)
        except Exception as exc:  # the library raises its own untyped errors on bad JSON
            raise ValueError(f"checkpoint 'tokenizer': not a valid tokenizers JSON ({exc})") from None
        self._json = model_json
        vocab = self._hf.get_vocab(with_added_tokens=True)
        self.vocab = sorted(vocab, key=vocab.get)
        if self.vocab[:2] != list(SPECIAL_TOKENS):
            raise ValueError("checkpoint 'tokenizer': the subword vocabulary must give ids 0, 1 to "
                             "'<pad>', '<unk>'")
        # A word that starts with an unseen character encodes as a bare "▁" and <unk>: the word
        # start alone says nothing, so it does not make a prompt readable.
        self.blank_ids = frozenset({UNK, vocab.get("\u2581", UNK)})

    @classmethod
    def from_captions(cls, captions: Iterable[str], vocab_size: int,
                      max_len: int | None = None) -> "SubwordTokenizer":
        """BPE trained on the captions' first max_len words each; at most vocab_size tokens (fewer
        when the captions hold fewer merges). Same captions -> same JSON, byte for byte: the
        alphabet is sorted and merge ties are broken by token id (no randomness in BPE training)."""
        from tokenizers import Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"subword_vocab_size {vocab_size}: needs room for {list(SPECIAL_TOKENS)} "
                             "and at least one character (>= 3)")
        hf = HFTokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
        hf.pre_tokenizer = pre_tokenizers.Metaspace()
        # The alphabet is capped so that the vocabulary, and the embedding, never exceed vocab_size,
        # whatever characters the captions hold (the rarest are dropped to UNK).
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      limit_alphabet=max(1, vocab_size - len(SPECIAL_TOKENS)),
                                      max_token_length=_MAX_PIECE_CHARS, show_progress=False)
        texts = [t for t in (_subword_text(c, max_len) for c in captions) if t]
        if not texts:
            raise ValueError("no training caption has a letter or digit to train the subword tokenizer on")
        hf.train_from_iterator(texts, trainer)
        return cls(hf.to_str())

    @classmethod
    def from_state(cls, state: dict) -> "SubwordTokenizer":
        if not isinstance(state, dict) or state.get("kind") != cls.KIND or not isinstance(state.get("json"), str):
            raise ValueError(f"checkpoint 'tokenizer': a subword tokenizer state is "
                             f"{{'kind': '{cls.KIND}', 'json': str}}")
        return cls(state["json"])

    def state(self) -> dict[str, str]:
        return {"kind": self.KIND, "json": self._json}

    def encode(self, text: str, max_len: int) -> list[int]:
        """Piece ids of `text`, truncated to max_len (unseen characters -> UNK)."""
        return self._hf.encode(_subword_text(text, max_len)).ids[:max_len]

    def unknown_words(self, text: str) -> list[str]:
        """Whitespace words of the normalised text that hold a character unseen in training."""
        text = normalize_caption(text)
        enc = self._hf.encode(text)
        bad = sorted({w for i, w in zip(enc.ids, enc.word_ids) if i == UNK})
        words = text.split()
        return [words[w] for w in bad]


AnyTokenizer = Union[Tokenizer, SubwordTokenizer]


def build_tokenizer(cfg: Any, captions: Iterable[str]) -> AnyTokenizer:
    """The tokenizer `cfg.tokenizer` names, built from the training captions cut to
    cfg.max_text_len_tokens words each."""
    if cfg.tokenizer == "word":
        return Tokenizer.from_captions(captions, cfg.max_text_len_tokens)
    if cfg.tokenizer == "bpe":
        return SubwordTokenizer.from_captions(captions, cfg.subword_vocab_size, cfg.max_text_len_tokens)
    raise ValueError(f"config key 'tokenizer': {cfg.tokenizer!r} is not one of {TOKENIZER_KINDS}")


def tokenizer_from_state(state: list[str] | dict) -> AnyTokenizer:
    """The tokenizer saved in a checkpoint: a word list (word) or {'kind': 'bpe', 'json': ...}."""
    if isinstance(state, dict):
        return SubwordTokenizer.from_state(state)
    return Tokenizer.from_state(state)


def usable_prompt(tokenizer: AnyTokenizer, prompt: str, max_len: int) -> bool:
    """True when the tokens the model reads (the first max_len) include one that carries known text."""
    return any(i not in tokenizer.blank_ids for i in tokenizer.encode(prompt, max_len))


def check_prompts(tokenizer: AnyTokenizer, prompts: list[str], max_len: int) -> None:
    """Reject (ValueError naming it) a prompt that is empty after normalisation or whose first
    max_len tokens are all unknown: the model would silently produce an arbitrary sign. Warn about
    unknown words and about prompts cut to max_len tokens."""
    unit = tokenizer.UNIT
    for prompt in prompts:
        tokens = tokenizer.encode(prompt, sys.maxsize)
        shown = prompt if len(prompt) <= 80 else f"{prompt[:60]}... ({len(prompt)} characters)"
        if not tokens:
            raise ValueError(f"prompt {shown!r} is empty after normalization (no letters or digits)")
        if not usable_prompt(tokenizer, prompt, max_len):
            where = "" if len(tokens) <= max_len else f" among the first {max_len} that the model reads"
            raise ValueError(f"prompt {shown!r}: no {unit}{where} is in the training vocabulary "
                             f"({len(tokenizer) - 2} {unit}s, e.g. {tokenizer.vocab[2:8]})")
        unknown = tokenizer.unknown_words(prompt)
        if unknown:
            warnings.warn(f"prompt {shown!r}: unknown words {unknown[:20]} are read as <unk>")
        if len(tokens) > max_len:
            warnings.warn(f"prompt {shown!r} has {len(tokens)} {unit}s; only the first {max_len} are used")


class Collate:
    """Stack tensors, keep other fields as lists, and tokenize `caption` into tokens/token_mask."""

    def __init__(self, tokenizer: AnyTokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
        batch["tokens"], batch["token_mask"] = self.tokenizer.batch(batch["caption"], self.max_len)
        return batch
