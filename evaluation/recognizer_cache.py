"""The recogniser of a configured dataset, kept beside its derived-data cache, and its CLI.

`load_or_train(cfg)` returns the recogniser trained on cfg's ground-truth training keypoints
(evaluation/recognizer.py), trained once and saved under a key of everything that shapes it;
`trained_recognizer(cfg)` finds it without training. `python -m evaluation.recognizer` (main below)
trains or loads it and prints its gloss WER on the ground-truth test keypoints.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from checkpoint import CheckpointError
from data import derived_cache_dir
from data.real.common import DatasetError
from data.signer import parse_caption
from evaluation.recognizer import FORMAT_VERSION, Recognizer, RecognizerSpec, dataset_scores, train_recognizer

_FINGERPRINT_ITEMS = 64  # items hashed to tell one dataset from another without reading all of it


def recognizer_path(cfg, train_dataset, spec: RecognizerSpec) -> str:
    """recognizer_{dataset}_{key}.pt in `derived_cache_dir(cfg)`. The key hashes what shapes the
    recogniser: the spec, the format version, the split's size and the content (keypoints,
    visibility, glosses) of up to 64 evenly spaced items, which changes with the signer, the seed,
    the frame count or the clip list, so a changed dataset trains a new recogniser."""
    n = len(train_dataset)
    h = hashlib.sha256(json.dumps(dict(version=FORMAT_VERSION, spec=dataclasses.asdict(spec), dataset=cfg.dataset,
                                       cls=type(train_dataset).__name__, num_clips=n), sort_keys=True).encode())
    for index in sorted({int(i) for i in np.linspace(0, n - 1, min(n, _FINGERPRINT_ITEMS)).round()}):
        item = train_dataset[index]
        for key in ("pose_xy", "pose_visible"):
            if key not in item:
                raise DatasetError(f"item {index} of the {cfg.dataset} train split has no '{key}': the "
                                   "recogniser needs keypoints (pose_xy, pose_visible) and glosses")
            h.update(np.ascontiguousarray(np.asarray(item[key])).tobytes())
        h.update("|".join(item.get("glosses", [])).encode())
    return os.path.join(derived_cache_dir(cfg), f"recognizer_{cfg.dataset}_{h.hexdigest()[:16]}.pt")


class SyntheticGlosses(torch.utils.data.Dataset):
    """A release-layout export of the synthetic signer (data/export_synthetic.py) with the glosses
    its captions name (data.signer.parse_caption): the only labels it has, and exact ones."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["glosses"] = parse_caption(item["caption"])
        return item


def labelled_split(cfg, split: str, synthetic_captions: bool = False):
    """cfg's `split` with gloss labels: the dataset's own, or parsed from synthetic captions."""
    from data import build_dataset

    dataset = build_dataset(cfg, split)
    return SyntheticGlosses(dataset) if synthetic_captions and cfg.dataset != "synthetic" else dataset


def trained_recognizer(cfg, synthetic_captions: bool = False, spec: RecognizerSpec | None = None) -> Recognizer | None:
    """The recogniser `load_or_train` would use for cfg's dataset, if it was trained; else None."""
    spec = spec or RecognizerSpec(seed=cfg.seed)
    try:
        path = recognizer_path(cfg, labelled_split(cfg, "train", synthetic_captions), spec)
    except DatasetError:  # no keypoints or no glosses: nothing a recogniser could read
        return None
    return Recognizer.load(path) if os.path.exists(path) else None


def load_or_train(cfg, spec: RecognizerSpec | None = None, retrain: bool = False,
                  log_every_steps: int = 0, synthetic_captions: bool = False) -> tuple[Recognizer, str, bool]:
    """(recogniser of cfg's dataset, its path, whether it was trained now): loads the file keyed
    by `recognizer_path` if present (unless `retrain`), else trains on the train split and saves."""
    spec = spec or RecognizerSpec(seed=cfg.seed)
    train = labelled_split(cfg, "train", synthetic_captions)
    path = recognizer_path(cfg, train, spec)
    if os.path.exists(path) and not retrain:
        return Recognizer.load(path), path, False
    recognizer = train_recognizer(train, spec, log_every_steps=log_every_steps)
    recognizer.save(path)
    return recognizer, path, True


def _pop_flags(argv: list[str]) -> tuple[list[str], dict, bool, bool]:
    """Split the recogniser's own flags (--rec_steps, --rec_max_clips, --retrain, --scorer synthetic)
    from the config's."""
    rest, spec, retrain, synthetic, i = [], {}, False, False, 0
    names = {"--rec_steps": "steps", "--rec_max_clips": "max_train_clips"}
    while i < len(argv):
        arg, _, inline = argv[i].partition("=")
        if arg == "--retrain":
            retrain, i = True, i + 1
        elif arg == "--scorer":
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if inline else 2
            if value not in ("synthetic", "auto"):
                raise ValueError(f"--scorer expects 'synthetic' (the captions are the synthetic signer's: "
                                 f"glosses parse from them) or 'auto', got {value!r}")
            synthetic = value == "synthetic"
        elif arg in names:
            value = inline or (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if inline else 2
            try:
                spec[names[arg]] = int(value)
            except ValueError:
                raise ValueError(f"{arg} expects an integer, got {value!r}") from None
        else:
            rest.append(argv[i])
            i += 1
    return rest, spec, retrain, synthetic


def main(argv: list[str] | None = None) -> int:
    """python -m evaluation.recognizer [config flags] [--rec_steps N] [--rec_max_clips N] [--retrain]
    [--scorer synthetic]: train (or load) the recogniser, print its WER on ground-truth test keypoints.
    Exit 0, or 2 with one `error:` line for bad flags or unsuitable data."""
    from config import ConfigError, parse_cli

    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, spec_overrides, retrain, synthetic = _pop_flags(argv)
        cfg, _ = parse_cli(rest)
        spec = RecognizerSpec(**{"seed": cfg.seed, **spec_overrides})
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    start = time.time()
    try:
        recognizer, path, trained = load_or_train(cfg, spec, retrain=retrain, log_every_steps=250,
                                                  synthetic_captions=synthetic)
        print(f"recogniser {'trained and saved to' if trained else 'loaded from'} {path} "
              f"({len(recognizer.vocab)} glosses, {recognizer.info})")
        scores = dataset_scores(recognizer, labelled_split(cfg, "test", synthetic))
    except (DatasetError, CheckpointError) as exc:  # bad or unsuitable data: one line naming it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ground-truth test keypoints ({scores['num_clips']} clips, {scores['num_unreadable']} unreadable): "
          f"gloss WER {scores['gloss_wer']:.4f}  gloss accuracy {scores['gloss_accuracy']:.4f}  "
          f"({time.time() - start:.0f} s in all)")
    return 0
