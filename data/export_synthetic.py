"""Write the synthetic signer's train/val/test splits as a How2Sign release tree, keypoints included.

    python -m data.export_synthetic OUT [--num_train N] [--num_eval N] [--keypoint_noise_px S]
                                        [--keypoint_drop_rate R] [--seed K] [--num_workers W]

Training on OUT with `--dataset how2sign --data_root OUT` then runs the real-data path end to end on
data with a known answer: the clips are sample i of SyntheticSignDataset(split, seed) (same sentence,
caption and style), so the exact back-translator scores a model trained on them (the captions parse
with data.signer.parse_caption). Layout, as the release has it:

    OUT/sentence_level/{split}/text/en/raw_text/re_aligned/how2sign_realigned_{split}.csv  (TAB-separated)
    OUT/sentence_level/{split}/rgb_front/raw_videos/{SENTENCE_NAME}.mp4
    OUT/sentence_level/{split}/rgb_front/features/openpose_output/json/{SENTENCE_NAME}/
        {SENTENCE_NAME}_{frame:012d}_keypoints.json      (BODY_25 + 2x21 hands + 70 face, c = 0 = missing)
    OUT/export.json                                      (the settings; written last)

Frames are 16:9 (--frame_height_px, default 180 -> 320x180): the square scene rendered at the frame
height sits at a random horizontal offset on a canvas of its background colour, so the signer is
off-centre as in real footage. Keypoints are in the exported frame's pixels (continuous coordinates,
pixel column i covers [i, i+1)): BODY_25 Nose, Neck, shoulders, elbows, wrists; per hand point 0
(the wrist) and 9 (the hand centre, the middle-finger MCP); every other point c = 0 (the signer has
no legs, face points or fingers). --keypoint_noise_px adds estimator-like Gaussian jitter (std in
exported pixels) and drops points (c = 0): each point with --keypoint_drop_rate, and each whole hand
in a frame with the same rate (the loader then falls back to the body wrist).
"""
from __future__ import annotations

import cli
import dataclasses
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from data import skeleton
from data.synthetic import SPLIT_IDS, SyntheticSignDataset
from data.video_io import to_uint8_frames, write_mp4

COLUMNS = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED", "END_REALIGNED",
           "SENTENCE")  # data/real/how2sign.py reads these
_PLACEMENT_STREAM, _NOISE_STREAM = 10, 11  # seed streams of the export, apart from the dataset's own
DEFAULT_DROP_RATE = 0.05  # --keypoint_drop_rate when --keypoint_noise_px > 0 and no rate is given
# BODY_25 index of each reduced body point the signer has (data/skeleton.py's table).
BODY_25 = {"nose": 0, "neck": 1, "right_shoulder": 2, "right_elbow": 3, "right_wrist": 4, "left_shoulder": 5,
           "left_elbow": 6, "left_wrist": 7}
HAND_WRIST, HAND_CENTRE = 0, 9  # OpenPose hand points


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    out_dir: str
    num_train: int
    num_eval: int
    num_frames: int
    frame_height_px: int
    fps: float
    seed: int
    keypoint_noise_px: float
    keypoint_drop_rate: float

    @property
    def frame_width_px(self) -> int:
        return 2 * int(round(self.frame_height_px * 16 / 9 / 2))  # 16:9, even for yuv420p


def sentence_name(split: str, index: int) -> str:
    return f"synth-{split}-{index:06d}_0-1-rgb_front"


def split_dir(out_dir: str, split: str) -> str:
    return os.path.join(out_dir, "sentence_level", split)


def openpose_people(xy_px: np.ndarray, visible: np.ndarray, hand_found: np.ndarray | None = None) -> list[dict]:
    """One frame's OpenPose `people` from the reduced skeleton (J, 2) exported pixels, (J,) visible;
    hand_found (2,) [right, left] False = that hand's whole component missing (c = 0)."""
    hand_found = np.ones(2, bool) if hand_found is None else hand_found

    def component(count: int, points: dict[int, int], found: bool = True) -> list[float]:
        values = [0.0] * (3 * count)
        for source, j in points.items():
            if visible[j] and found:
                values[3 * source:3 * source + 3] = [round(float(xy_px[j, 0]), 3), round(float(xy_px[j, 1]), 3), 1.0]
        return values

    hands = {side: {HAND_WRIST: skeleton.WRISTS[k], HAND_CENTRE: skeleton.HANDS[k]}
             for k, side in enumerate(("right", "left"))}
    return [{"person_id": [-1], "pose_keypoints_2d": component(25, {b: skeleton.INDEX[n] for n, b in BODY_25.items()}),
             "face_keypoints_2d": component(70, {}),
             "hand_left_keypoints_2d": component(21, hands["left"], bool(hand_found[1])),
             "hand_right_keypoints_2d": component(21, hands["right"], bool(hand_found[0])), "pose_keypoints_3d": [],
             "face_keypoints_3d": [], "hand_left_keypoints_3d": [], "hand_right_keypoints_3d": []}]


def add_estimator_noise(xy_px: np.ndarray, visible: np.ndarray, noise_px: float, drop_rate: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xy (T, J, 2) jittered by N(0, noise_px), visible (T, J) with points dropped i.i.d. at
    drop_rate, hand_found (T, 2): whole hand components lost at drop_rate per frame and hand)."""
    xy = xy_px + rng.normal(0.0, noise_px, xy_px.shape) if noise_px > 0 else xy_px.copy()
    keep = visible & (rng.random(visible.shape) >= drop_rate)
    return xy, keep, rng.random((len(xy), 2)) >= drop_rate


def export_clip(settings: ExportSettings, split: str, index: int) -> list[str]:
    """Render sample `index` of `split`, write its MP4 and OpenPose folder; returns its CSV row."""
    num = settings.num_train if split == "train" else settings.num_eval
    data = SyntheticSignDataset(split, num, settings.num_frames, settings.frame_height_px, settings.seed)
    item = data[index]
    scene = to_uint8_frames(item["video"])  # (T, H, H, 3)
    h, w = settings.frame_height_px, settings.frame_width_px
    rng = np.random.default_rng([settings.seed % 2 ** 63, SPLIT_IDS[split], index, _PLACEMENT_STREAM])
    left = int(rng.integers(0, w - h + 1))
    canvas = np.empty((len(scene), h, w, 3), np.uint8)
    canvas[:] = scene[0, 0, 0]  # the scene's background colour (its top-left corner is never covered)
    canvas[:, :, left:left + h] = scene
    name = sentence_name(split, index)
    base = os.path.join(split_dir(settings.out_dir, split), "rgb_front")
    write_mp4(os.path.join(base, "raw_videos", name + ".mp4"), canvas, fps=settings.fps)

    xy_px = item["pose_xy"].numpy().astype(np.float64) * h + [left, 0]
    visible = item["pose_visible"].numpy()
    hand_found = np.ones((len(xy_px), 2), bool)
    if settings.keypoint_noise_px > 0 or settings.keypoint_drop_rate > 0:
        noise_rng = np.random.default_rng([settings.seed % 2 ** 63, SPLIT_IDS[split], index, _NOISE_STREAM])
        xy_px, visible, hand_found = add_estimator_noise(xy_px, visible, settings.keypoint_noise_px,
                                                         settings.keypoint_drop_rate, noise_rng)
    folder = os.path.join(base, "features", "openpose_output", "json", name)
    os.makedirs(folder, exist_ok=True)
    for t in range(len(xy_px)):
        with open(os.path.join(folder, f"{name}_{t:012d}_keypoints.json"), "w") as fh:
            json.dump({"version": 1.3, "people": openpose_people(xy_px[t], visible[t], hand_found[t])}, fh,
                      separators=(",", ":"))
    video_id = name.split("_")[0]
    return [video_id, f"{video_id}-1-rgb_front", f"{video_id}_0", name, "0.00",
            f"{settings.num_frames / settings.fps:.2f}", data.caption_of(index)]


def _export_task(task: tuple[ExportSettings, str, int]) -> list[str]:
    return export_clip(*task)


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def export(settings: ExportSettings, num_workers: int = 1, progress: bool = True) -> dict:
    """Write the whole tree (see the module docstring); returns export.json's content."""
    from tqdm import tqdm

    if os.path.isdir(settings.out_dir) and os.listdir(settings.out_dir):
        raise FileExistsError(f"{settings.out_dir}: not empty; give a new or empty folder")
    start_s = time.perf_counter()
    counts = {"train": settings.num_train, "val": settings.num_eval, "test": settings.num_eval}
    tasks = [(settings, split, i) for split, n in counts.items() for i in range(n)]
    pool = ProcessPoolExecutor(num_workers, initializer=_one_thread) if num_workers > 1 else None
    try:
        rows = pool.map(_export_task, tasks, chunksize=8) if pool else map(_export_task, tasks)
        rows = list(tqdm(rows, total=len(tasks), unit="clip", disable=not progress, desc="exporting"))
    finally:
        if pool:
            pool.shutdown()
    by_split: dict[str, list[list[str]]] = {split: [] for split in counts}
    for (_, split, _), row in zip(tasks, rows):
        by_split[split].append(row)
    for split, split_rows in by_split.items():
        folder = os.path.join(split_dir(settings.out_dir, split), "text", "en", "raw_text", "re_aligned")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"how2sign_realigned_{split}.csv"), "w", encoding="utf-8") as fh:
            fh.write("\t".join(COLUMNS) + "\n")
            for row in split_rows:
                fh.write("\t".join(row) + "\n")
    info = dict(dataclasses.asdict(settings), frame_width_px=settings.frame_width_px, clips=counts,
                export_s=round(time.perf_counter() - start_s, 1), num_workers=num_workers)
    size = 0
    for folder, _, files in os.walk(settings.out_dir):
        size += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    info["tree_bytes"] = size
    with open(os.path.join(settings.out_dir, "export.json"), "w") as fh:
        json.dump(info, fh, indent=1)
    return info


def main(argv: list[str]) -> int:
    from config import Config

    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    parser = cli.ArgumentParser(prog="python -m data.export_synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", metavar="OUT")
    parser.add_argument("--num_train", type=int, default=2000, help="train clips (default 2000)")
    parser.add_argument("--num_eval", type=int, default=defaults["num_eval_samples"], help="val and test clips each")
    parser.add_argument("--num_frames", type=int, default=defaults["num_frames"], help="frames per clip")
    parser.add_argument("--frame_height_px", type=int, default=180, help="frame height; width = 16/9 of it")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate written into the MP4s")
    parser.add_argument("--seed", type=int, default=defaults["seed"], help="the synthetic dataset's seed")
    parser.add_argument("--keypoint_noise_px", type=float, default=0.0, help="keypoint jitter std, exported px")
    parser.add_argument("--keypoint_drop_rate", type=float, default=None,
                        help=f"share of points (and of hands per frame) dropped; default {DEFAULT_DROP_RATE} "
                             "with --keypoint_noise_px > 0, else 0")
    parser.add_argument("--num_workers", type=int, default=min(2, os.cpu_count() or 1), help="processes")
    args = parser.parse_args(argv)
    drop = args.keypoint_drop_rate
    if drop is None:
        drop = DEFAULT_DROP_RATE if args.keypoint_noise_px > 0 else 0.0
    problems = [msg for bad, msg in (
        (args.num_train < 1 or args.num_eval < 1, "--num_train and --num_eval must be >= 1"),
        (args.num_frames < 3, "--num_frames must be >= 3 (a sentence has up to 3 glosses)"),
        (args.frame_height_px < 8 or args.frame_height_px % 2, "--frame_height_px must be even and >= 8"),
        (not args.fps > 0, "--fps must be > 0"),
        (not args.keypoint_noise_px >= 0, "--keypoint_noise_px must be >= 0"),
        (not 0 <= drop < 1, "--keypoint_drop_rate must be in [0, 1)"),
        (args.num_workers < 1, "--num_workers must be >= 1")) if bad]
    if problems:
        print(f"error: {problems[0]}", file=sys.stderr)
        return 2
    settings = ExportSettings(args.out_dir, args.num_train, args.num_eval, args.num_frames, args.frame_height_px,
                              args.fps, args.seed, args.keypoint_noise_px, drop)
    try:
        info = export(settings, args.num_workers)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported {sum(info['clips'].values())} clips ({info['clips']}) of {settings.frame_width_px}x"
          f"{settings.frame_height_px} to {settings.out_dir} in {info['export_s']:.1f} s, "
          f"{info['tree_bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
