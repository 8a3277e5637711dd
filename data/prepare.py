"""Build the preprocessing cache of a real dataset ahead of training (training builds it too, on
first use; this lets you do it once, e.g. on a data node, and see throughput and skipped clips).

    python -m data.prepare --dataset how2sign --data_root /data/how2sign --frame_size_px 64 --sample_fps 8
    python -m data.prepare --config configs/phoenix.yaml --data_root /data/phoenix --splits train val

Any config key can be given as --key value (same parsing as main.py); --splits picks the splits.
"""
from __future__ import annotations

import logging
import sys
import time

import cli
from config import ConfigError, parse_cli
from data.real import DatasetError, build_real_dataset


def main(argv: list[str]) -> int:
    splits = ["train", "val", "test"]
    if "--splits" in argv:
        at = argv.index("--splits")
        rest = argv[at + 1:]
        count = next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))
        splits, argv = rest[:count], argv[:at] + rest[count:]
        if not splits or any(s not in ("train", "val", "test") for s in splits):
            print(f"error: --splits takes train, val and/or test, got {splits}", file=sys.stderr)
            return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Preparing trains nothing, so the cpu preset's pose stage (which needs the synthetic
        # signer's hand labels) is off here unless asked for; an explicit flag still wins.
        cfg, _ = parse_cli(["--pose_cond", "false", *argv])
        if cfg.dataset == "synthetic":
            raise ConfigError("--dataset: give a real dataset (how2sign, phoenix, wlasl, folder); "
                              "synthetic clips are rendered on demand and need no cache")
        for split in splits:
            start_s = time.perf_counter()
            dataset = build_real_dataset(cfg, split)
            elapsed_s = time.perf_counter() - start_s
            print(f"{cfg.dataset} {split}: {len(dataset)} clips ready in {elapsed_s:.1f} s "
                  f"({len(dataset) / max(elapsed_s, 1e-9):.1f} clips/s), cache {dataset.index.frames_path}")
    except (ConfigError, DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:], restore_signals=False))
