"""BPE or unigram for real captions: train both on English sentences, score them on held-out ones.

    python scripts/tokenizer_choice.py [--num_train 30000] [--num_test 3000] [--vocab_sizes 1000 2000 4000 8000]

No caption corpus ships with the project and nothing is downloaded, so the English comes from the
docstrings of the Python standard library and installed packages on this machine (sentences of 6-30 plain words; a
Zipf-shaped vocabulary of How2Sign's order, ~20k types over ~70k sentences). Both tokenizers get
the same normalisation (data.text.normalize_caption), pre-tokenizer (Metaspace), specials and
longest piece (16 characters); only the model and trainer differ.

Columns, on the held-out sentences:
- unseen_words: share of held-out words never seen in training (a property of the split);
- unk_unseen: share of those unseen words with an <unk> piece (should be ~0 for both);
- pieces_unseen: mean pieces per unseen word (fewer = longer known units);
- stem_kept: of unseen words that are a training word plus a suffix (walk -> walked), the share
  whose pieces have a boundary right after the stem (the known word survives as a unit);
- pieces_sent / cut_32: mean pieces per sentence, share of sentences over 32 pieces (How2Sign's
  max_text_len_tokens), i.e. text the model never reads;
- same_json: two trainings give the same JSON; train_s: seconds to train.
"""
from __future__ import annotations

import argparse
import os
import random
import re
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data.text import SPECIAL_TOKENS, SubwordTokenizer, _MAX_PIECE_CHARS, normalize_caption  # noqa: E402

SUFFIXES = ("s", "es", "ed", "d", "ing", "er", "ers", "ly", "al", "ation", "ness", "able")


def docstring_sentences() -> list[str]:
    """Plain English sentences from installed Python docstrings, sorted (deterministic)."""
    out = set()
    paths = sysconfig.get_paths()
    roots = sorted({paths["stdlib"], paths["purelib"], paths["platlib"]})
    for root, _, files in (entry for top in roots for entry in sorted(os.walk(top))):
        if "test" in root:
            continue
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(root, name), encoding="utf-8", errors="replace") as fh:
                docs = re.findall(r'"""(.*?)"""', fh.read(), re.S)
            for doc in docs:
                for sent in re.split(r"(?<=[.!?])\s+", " ".join(doc.split())):
                    if 6 <= len(sent.split()) <= 30 and re.fullmatch(r"[A-Za-z][A-Za-z ,.'!?;:-]+", sent):
                        out.add(sent)
    return sorted(out)


def train_unigram(captions: list[str], vocab_size: int) -> SubwordTokenizer:
    """The unigram counterpart of SubwordTokenizer.from_captions (same normalisation and pieces)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    hf = Tokenizer(models.Unigram())
    hf.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      unk_token="<unk>", max_piece_length=_MAX_PIECE_CHARS,
                                      show_progress=False)
    hf.train_from_iterator([normalize_caption(c) for c in captions], trainer)
    return SubwordTokenizer(hf.to_str())


def score(tok: SubwordTokenizer, train: list[str], test: list[str]) -> dict[str, float]:
    seen = {w for c in train for w in c.split()}
    unseen = [w for c in test for w in c.split() if w not in seen]
    pieces = [tok._hf.encode(w) for w in unseen]
    stem_hits = stem_total = 0
    for word, enc in zip(unseen, pieces):
        stems = [word[: -len(s)] for s in SUFFIXES if word.endswith(s) and word[: -len(s)] in seen
                 and len(word) - len(s) >= 3]
        if stems:
            stem_total += 1
            bounds, at = set(), 0
            for piece in enc.tokens:
                at += len(piece.lstrip("▁")) if at == 0 else len(piece)
                bounds.add(at)
            stem_hits += any(len(s) in bounds for s in stems)
    lengths = [len(tok.encode(c, sys.maxsize)) for c in test]
    return {"unseen_words": len(unseen) / sum(len(c.split()) for c in test),
            "unk_unseen": sum(1 in e.ids for e in pieces) / max(1, len(unseen)),
            "pieces_unseen": sum(len(e.ids) for e in pieces) / max(1, len(unseen)),
            "stem_kept": stem_hits / max(1, stem_total),
            "pieces_sent": sum(lengths) / len(lengths),
            "cut_32": sum(n > 32 for n in lengths) / len(lengths)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num_train", type=int, default=30000)
    ap.add_argument("--num_test", type=int, default=3000)
    ap.add_argument("--vocab_sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    args = ap.parse_args()
    sentences = docstring_sentences()
    random.Random(0).shuffle(sentences)
    if len(sentences) < args.num_train + args.num_test:
        raise SystemExit(f"error: only {len(sentences)} sentences; lower --num_train/--num_test")
    train = [normalize_caption(s) for s in sentences[: args.num_train]]
    test = [normalize_caption(s) for s in sentences[args.num_train: args.num_train + args.num_test]]
    print(f"{len(sentences)} sentences; train {len(train)} ({len({w for c in train for w in c.split()})} "
          f"word types), test {len(test)}")
    cols = ("unseen_words", "unk_unseen", "pieces_unseen", "stem_kept", "pieces_sent", "cut_32")
    print("| model | vocab | " + " | ".join(cols) + " | same_json | train_s |")
    print("|---" * (len(cols) + 4) + "|")
    for vocab_size in args.vocab_sizes:
        for name, build in (("bpe", lambda c, v: SubwordTokenizer.from_captions(c, v)),
                            ("unigram", train_unigram)):
            start = time.perf_counter()
            tok = build(train, vocab_size)
            train_s = time.perf_counter() - start
            same = build(train, vocab_size).state() == tok.state()
            row = score(tok, train, test)
            print(f"| {name} | {len(tok)} | " + " | ".join(f"{row[c]:.3f}" for c in cols)
                  + f" | {same} | {train_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
