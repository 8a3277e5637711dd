"""Train the fvd video encoder of the default demo's shape and write it to evaluation/encoders/.

    python scripts/ship_video_encoder.py

Run it when `tests/test_video_distance.py::test_the_default_demos_encoder_ships_with_the_code` fails:
the renderer, the default data settings or `ENCODER_RECIPE` changed, so the shipped file's key no
longer matches and every demo would train its own again. It removes the stale files, trains the encoder
the way any evaluation does (deterministic, CPU, printing its held-out accuracy) and saves it under the
new key; commit the new file with the change that moved the key (and rescore the fvd rows it touches).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from config import make_config  # noqa: E402
from evaluation.video_distance import SHIPPED_DIR, load_or_train_encoder  # noqa: E402


def main() -> int:
    cfg = make_config("cpu", {})
    os.makedirs(SHIPPED_DIR, exist_ok=True)
    for name in os.listdir(SHIPPED_DIR):
        if name.startswith(f"video_encoder_{cfg.dataset}_") and name.endswith(".pt"):
            os.remove(os.path.join(SHIPPED_DIR, name))
            print(f"removed the previous {name}")
    load_or_train_encoder(cfg, log=print, cache_dir=SHIPPED_DIR)
    print("wrote", *sorted(n for n in os.listdir(SHIPPED_DIR) if n.endswith(".pt")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
