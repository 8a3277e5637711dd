"""Video files: write GIF (PIL) and MP4 (PyAV) from uint8 or [-1, 1] float clips."""
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
