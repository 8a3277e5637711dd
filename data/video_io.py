"""Video files: write GIF (PIL) and MP4 (PyAV) from uint8 or [-1, 1] float clips; decode MP4, GIF, frame folders."""
from __future__ import annotations

import os
from fractions import Fraction

import numpy as np


def to_uint8_frames(video) -> np.ndarray:
    """(3, T, H, W) float in [-1, 1] (tensor or array) -> (T, H, W, 3) uint8."""
    arr = video.detach().float().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    if arr.ndim != 4 or arr.shape[0] != 3:
        raise ValueError(f"expected a (3, T, H, W) clip, got shape {arr.shape}")
    arr = np.clip((arr + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(1, 2, 3, 0))


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscale (T, H, W, 3) so small clips are visible in a viewer."""
    return frames.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else frames


def write_gif(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
    """(T, H, W, 3) uint8 -> looping GIF."""
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def write_mp4(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
    """(T, H, W, 3) uint8 -> H.264 MP4 (even sizes; yuv420p for players)."""
    import av

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# --- decoding -------------------------------------------------------------------------------------

VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_FRAME_FOLDER_FPS = 25.0  # PHOENIX-2014T's rate; frame folders carry no timing of their own


class VideoDecodeError(ValueError):
    """A clip that is missing, truncated or cannot be decoded (the message names the file)."""


def read_video(path: str, fps_hint: float | None = None) -> tuple[np.ndarray, float]:
    """Decode a clip: MP4 & co. (PyAV), GIF (PIL) or a folder of PNG/JPEG frames (sorted by name).

    Returns (frames uint8 (T, H, W, 3), fps). `fps_hint` is used where the file has no rate of its
    own (frame folders) or reports none. Raises VideoDecodeError naming the file on any failure.
    """
    if not os.path.exists(path):
        raise VideoDecodeError(f"{path}: file not found")
    try:
        if os.path.isdir(path):
            frames, fps = _read_frame_folder(path), None
        elif path.lower().endswith(".gif"):
            frames, fps = _read_gif(path)
        else:
            frames, fps = _read_pyav(path)
    except VideoDecodeError:
        raise
    except Exception as exc:  # PyAV/PIL raise many types (InvalidDataError, OSError, EOFError, ...)
        raise VideoDecodeError(f"{path}: cannot decode ({type(exc).__name__}: {exc})") from exc
    if len(frames) == 0:
        raise VideoDecodeError(f"{path}: no frames decoded")
    return frames, float(fps or fps_hint or DEFAULT_FRAME_FOLDER_FPS)


def _read_pyav(path: str) -> tuple[np.ndarray, float | None]:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # ffmpeg frame threads: large speed-up on 720p sources
        declared_frames = stream.frames
        fps = float(stream.average_rate) if stream.average_rate else None
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    # A file cut short can still open (moov atom first) and decode its first part without error;
    # the container's own frame count tells us it is incomplete.
    if declared_frames and len(frames) < declared_frames - max(2, declared_frames // 20):
        raise VideoDecodeError(f"{path}: truncated ({len(frames)} of {declared_frames} frames decoded)")
    return (np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)), fps


def _read_gif(path: str) -> tuple[np.ndarray, float | None]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        frames, durations_ms = [], []
        for frame in ImageSequence.Iterator(im):
            frames.append(np.asarray(frame.convert("RGB")))
            durations_ms.append(frame.info.get("duration", 0) or 0)
    mean_ms = float(np.mean(durations_ms)) if durations_ms else 0.0
    return np.stack(frames), (1000.0 / mean_ms if mean_ms > 0 else None)


def _read_frame_folder(path: str) -> np.ndarray:
    from PIL import Image

    names = sorted(n for n in os.listdir(path) if n.lower().endswith(FRAME_EXTENSIONS))
    if not names:
        raise VideoDecodeError(f"{path}: folder has no PNG/JPEG frames")
    frames = []
    for name in names:
        with Image.open(os.path.join(path, name)) as im:
            frames.append(np.asarray(im.convert("RGB")))
    if len({f.shape for f in frames}) != 1:
        raise VideoDecodeError(f"{path}: frames differ in size")
    return np.stack(frames)
