"""A procedural signer: a cartoon person whose gloved hands trace one path per gloss.

Coordinates are normalized to the frame: x right, y down, both in [0, 1]. "Right" is the signer's
right hand, drawn on the image's left. The hands are gloves in two saturated colours (yellow right,
magenta left) that nothing else in the scene uses, so `evaluation.tracking` can find them by colour.

A gloss is a path of keyframes per hand. Every gloss starts and ends at the rest pose (hands low at
the sides), so a sentence of 1-3 glosses passes through rest between signs; its frames are split
about evenly among the glosses. Rendering is vectorized over frames: every shape is an anti-aliased
signed-distance field on a precomputed pixel grid, so sub-pixel motion stays visible at 32 px.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from data import skeleton

RIGHT_GLOVE_RGB = np.array([1.0, 0.86, 0.0], np.float32)  # yellow
LEFT_GLOVE_RGB = np.array([1.0, 0.0, 0.9], np.float32)  # magenta
HAND_RGB = np.stack([RIGHT_GLOVE_RGB, LEFT_GLOVE_RGB])  # (2, 3), [right, left]

REST_XY = np.array([[0.36, 0.86], [0.64, 0.86]], np.float32)  # (2, 2) [right, left] hand at rest
SHOULDER_XY = np.array([[0.36, 0.44], [0.64, 0.44]], np.float32)
UPPER_ARM_LEN, FOREARM_LEN = 0.23, 0.23
HAND_RADIUS = {"open": 0.062, "fist": 0.047}  # hand shape proxy, normalized frame units
KEYFRAME_SPAN = (0.2, 0.8)  # phase interval of a gloss spent on its keyframes; the rest is transition


@dataclass(frozen=True)
class Gloss:
    """One sign. `right`/`left`: keyframes (x, y) of that hand, or "rest", or "mirror" (left only:
    the right path reflected about x = 0.5). `repeat` repeats the keyframe path."""

    right: tuple | str
    left: tuple | str = "rest"
    shape: str = "open"
    repeat: int = 1


# Each gloss differs from every other one in where the hands go and which hands move (checked by
# tests/test_metrics.py through back-translation); synonyms are single words owned by one gloss.
_GLOSS_TABLE: dict[str, tuple[Gloss, tuple[str, ...]]] = {
    # right hand only
    "HELLO": (Gloss(((0.36, 0.16), (0.15, 0.12))), ("hello", "hi", "greetings")),
    "THANK-YOU": (Gloss(((0.47, 0.33), (0.2, 0.56))), ("thanks", "thank", "grateful")),
    "EAT": (Gloss(((0.46, 0.33), (0.45, 0.43)), shape="fist", repeat=2), ("eat", "food", "meal")),
    "FATHER": (Gloss(((0.46, 0.11), (0.40, 0.19)), repeat=2), ("father", "dad", "daddy")),
    "YES": (Gloss(((0.2, 0.5), (0.2, 0.64)), shape="fist", repeat=2), ("yes", "yeah", "sure")),
    "PLEASE": (Gloss(((0.34, 0.54), (0.42, 0.46), (0.5, 0.54), (0.42, 0.62))), ("please", "kindly", "pray")),
    "GO": (Gloss(((0.4, 0.5), (0.1, 0.38))), ("go", "leave", "depart")),
    "DRINK": (Gloss(((0.22, 0.72), (0.43, 0.3))), ("drink", "beverage", "thirsty")),
    "SIT": (Gloss(((0.48, 0.72), (0.5, 0.63)), shape="fist", repeat=2), ("sit", "seat", "chair")),
    "ME": (Gloss(((0.64, 0.42), (0.56, 0.48)), shape="fist", repeat=2), ("me", "myself", "i")),
    "WHERE": (Gloss(((0.14, 0.24), (0.25, 0.28)), repeat=2), ("where", "location", "place")),
    # left hand only
    "WAIT": (Gloss("rest", ((0.8, 0.4), (0.86, 0.28)), repeat=2), ("wait", "pause", "hold")),
    "COLD": (Gloss("rest", ((0.56, 0.3), (0.72, 0.5))), ("cold", "freezing", "chilly")),
    # both hands mirrored
    "HOUSE": (Gloss(((0.47, 0.26), (0.3, 0.44), (0.3, 0.66)), "mirror"), ("house", "building", "home")),
    "BIG": (Gloss(((0.42, 0.52), (0.12, 0.52)), "mirror"), ("big", "large", "huge")),
    "SCHOOL": (Gloss(((0.3, 0.3), (0.44, 0.3)), "mirror", repeat=2), ("school", "class", "lesson")),
    "RAIN": (Gloss(((0.28, 0.1), (0.28, 0.36)), "mirror", repeat=2), ("rain", "raining", "storm")),
    "MORE": (Gloss(((0.37, 0.47), (0.45, 0.47)), "mirror", shape="fist", repeat=2), ("more", "extra", "again")),
    "WANT": (Gloss(((0.16, 0.66), (0.36, 0.72)), "mirror"), ("want", "wish", "desire")),
    "FINISH": (Gloss(((0.4, 0.36), (0.18, 0.2)), "mirror"), ("finish", "done", "complete")),
    # both hands, different paths
    "CAR": (Gloss(((0.28, 0.42), (0.28, 0.6)), ((0.72, 0.6), (0.72, 0.42)), repeat=2), ("car", "drive", "vehicle")),
    "WORK": (Gloss(((0.5, 0.58), (0.56, 0.66)), ((0.6, 0.7), (0.6, 0.7)), shape="fist", repeat=2),
             ("work", "job", "labour")),
    "LOVE": (Gloss(((0.58, 0.58), (0.58, 0.58)), ((0.44, 0.4), (0.44, 0.4)), shape="fist"),
             ("love", "adore", "cherish")),
    "HELP": (Gloss(((0.5, 0.7), (0.5, 0.5)), ((0.56, 0.76), (0.56, 0.56))), ("help", "assist", "support")),
    "FRIEND": (Gloss(((0.42, 0.44), (0.58, 0.44)), ((0.58, 0.64), (0.42, 0.64)), shape="fist"),
               ("friend", "buddy", "pal")),
    "TREE": (Gloss(((0.44, 0.62), (0.44, 0.2)), ((0.56, 0.64), (0.7, 0.64))), ("tree", "forest", "wood")),
}

GLOSSES: tuple[str, ...] = tuple(_GLOSS_TABLE)
SYNONYMS: dict[str, tuple[str, ...]] = {g: syn for g, (_, syn) in _GLOSS_TABLE.items()}
FILLERS: tuple[str, ...] = ("um", "so", "well", "the", "okay", "now", "uh", "today", "really", "just")
_TEMPLATES = ("{}", "{} {}", "{}, {}", "{} {} {}")


def make_caption(glosses: list[str], rng: np.random.Generator) -> str:
    """English-ish caption: one synonym per gloss, in sign order, with random fillers between.

    Synonym words are owned by exactly one gloss and never used as fillers, so `parse_caption`
    inverts every caption; the model still has to learn that "hi" and "greetings" sign the same."""
    u = rng.random(3 * len(glosses) + 3)  # one draw: captions are built for every sample up front
    words = []
    for i, gloss in enumerate(glosses):
        if u[3 * i] < 0.45:
            words.append(FILLERS[int(u[3 * i + 1] * len(FILLERS))])
        syn = SYNONYMS[gloss]
        words.append(syn[int(u[3 * i + 2] * len(syn))])
    if u[-3] < 0.3:
        words.append(FILLERS[int(u[-2] * len(FILLERS))])
    text = " ".join(words)
    return text[0].upper() + text[1:] + (".", "!", "")[int(u[-1] * 3)]


@functools.lru_cache(maxsize=None)
def _word_to_gloss() -> dict[str, str]:
    table = {w: g for g, syn in SYNONYMS.items() for w in syn}
    assert len(table) == sum(len(s) for s in SYNONYMS.values()), "a synonym is shared by two glosses"
    assert not set(table) & set(FILLERS), "a filler is also a synonym"
    return table


def parse_caption(caption: str) -> list[str]:
    """The gloss sequence a caption names (fillers and punctuation dropped)."""
    table = _word_to_gloss()
    words = "".join(c if c.isalnum() or c == "-" else " " for c in caption.lower()).split()
    return [table[w] for w in words if w in table]


# --- motion -----------------------------------------------------------------------------------

def _hand_keyframes(gloss: Gloss) -> list[np.ndarray]:
    """[right, left] keyframe arrays (K, 2) of one repetition expanded to all repetitions."""
    out = []
    for hand, spec in enumerate((gloss.right, gloss.left)):
        if spec == "mirror":
            path = np.array(gloss.right, np.float32) * [-1, 1] + [1, 0]
        elif spec == "rest":
            path = REST_XY[hand][None]
        else:
            path = np.array(spec, np.float32)
        out.append(np.tile(path, (gloss.repeat, 1)).astype(np.float32))
    return out


def _path_at(keys: np.ndarray, rest_xy: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Hand position (T, 2) at gloss phases (T,) in [0, 1]: rest -> keyframes -> rest, eased."""
    points = np.concatenate([rest_xy[None], keys, rest_xy[None]])
    lo, hi = KEYFRAME_SPAN
    times = np.concatenate([[0.0], np.linspace(lo, hi, len(keys)) if len(keys) > 1 else [0.5], [1.0]])
    seg = np.clip(np.searchsorted(times, phase, side="right") - 1, 0, len(times) - 2)
    u = (phase - times[seg]) / (times[seg + 1] - times[seg])
    u = u * u * (3 - 2 * u)  # smoothstep: hands settle at keyframes like a real sign's holds
    return points[seg] + u[:, None] * (points[seg + 1] - points[seg])


def _frame_phases(num_frames: int) -> np.ndarray:
    return (np.arange(num_frames, dtype=np.float64) + 0.5) / num_frames


def reference_trajectory(gloss: str, num_frames: int) -> np.ndarray:
    """Canonical (T, 2, 2) [right, left] hand centres (x, y) of `gloss` alone over `num_frames`
    frames: centred body, no amplitude or speed jitter. The back-translator matches against it."""
    keys = _hand_keyframes(_GLOSS_TABLE[gloss][0])
    phase = _frame_phases(num_frames)
    return np.stack([_path_at(keys[h], REST_XY[h], phase) for h in range(2)], 1).astype(np.float32)


# --- style ------------------------------------------------------------------------------------

# Muted palettes, far in RGB from both glove colours (no yellows, oranges, pinks or purples).
_SKIN = np.array([[0.96, 0.8, 0.69], [0.87, 0.67, 0.53], [0.72, 0.52, 0.38], [0.55, 0.38, 0.26],
                  [0.38, 0.26, 0.18]], np.float32)
_HAIR = np.array([[0.1, 0.08, 0.07], [0.28, 0.18, 0.1], [0.45, 0.28, 0.16], [0.55, 0.55, 0.55]], np.float32)
_SHIRT = np.array([[0.16, 0.26, 0.5], [0.2, 0.42, 0.32], [0.5, 0.16, 0.18], [0.22, 0.22, 0.26],
                   [0.3, 0.45, 0.6], [0.12, 0.36, 0.4], [0.4, 0.42, 0.34]], np.float32)
_BACKGROUND = np.array([[0.82, 0.84, 0.86], [0.74, 0.78, 0.8], [0.78, 0.8, 0.74], [0.86, 0.84, 0.8],
                        [0.62, 0.66, 0.7]], np.float32)


@dataclass(frozen=True)
class Style:
    skin_rgb: np.ndarray
    hair_rgb: np.ndarray
    shirt_rgb: np.ndarray
    background_rgb: np.ndarray
    body_offset_xy: np.ndarray  # (2,) whole-body shift, normalized
    body_scale: float  # whole-body size around the frame centre


def sample_style(rng: np.random.Generator) -> Style:
    def pick(palette, jitter):
        return np.clip(palette[rng.integers(len(palette))] + rng.uniform(-jitter, jitter, 3), 0, 1).astype(np.float32)

    return Style(skin_rgb=pick(_SKIN, 0.03), hair_rgb=pick(_HAIR, 0.03), shirt_rgb=pick(_SHIRT, 0.05),
                 background_rgb=pick(_BACKGROUND, 0.04),
                 body_offset_xy=rng.uniform(-0.03, 0.03, 2).astype(np.float32),
                 body_scale=float(rng.uniform(0.96, 1.04)))


# --- rendering --------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _pixel_grid(frame_size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x (1, 1, W), y (1, H, 1) in normalized units."""
    c = ((np.arange(frame_size_px, dtype=np.float32) + 0.5) / frame_size_px)
    return c[None, None, :], c[None, :, None]


def _coverage(sdf: np.ndarray, frame_size_px: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (normalized units, < 0 inside)."""
    cov = np.multiply(sdf, -frame_size_px, dtype=np.float32)
    cov += 0.5
    return np.clip(cov, 0.0, 1.0, out=cov)


def _sdf_ellipse(x, y, cx, cy, rx, ry):
    return (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * min(rx, ry)


def _sdf_capsule(x, y, ax, ay, bx, by, radius):
    """Distance to the segment a-b minus radius; endpoints may be (T, 1, 1) arrays."""
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return np.sqrt((x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2) - radius


def _sdf_box(x, y, x0, y0, x1, y1):
    qx = np.abs(x - (x0 + x1) / 2) - (x1 - x0) / 2
    qy = np.abs(y - (y0 + y1) / 2) - (y1 - y0) / 2
    return np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)


def _elbows(shoulder: np.ndarray, hand: np.ndarray, outward_x: float, scale: float) -> np.ndarray:
    """Two-link inverse kinematics: elbow (T, 2) for hands (T, 2), bent outward and down."""
    upper, fore = UPPER_ARM_LEN * scale, FOREARM_LEN * scale
    delta = hand - shoulder
    dist = np.clip(np.linalg.norm(delta, axis=1, keepdims=True), 1e-6, upper + fore - 1e-6)
    u = delta / dist
    along = (upper ** 2 - fore ** 2 + dist ** 2) / (2 * dist)
    height = np.sqrt(np.maximum(upper ** 2 - along ** 2, 0.0))
    normal = np.stack([-u[:, 1], u[:, 0]], 1)
    normal *= np.sign(normal @ np.array([outward_x, 0.5], np.float32) + 1e-6)[:, None]
    return shoulder + along * u + height * normal


def _static_layer(style: Style, frame_size_px: int) -> np.ndarray:
    """Background, torso and head as (H, W, 3) float32 in [0, 1]."""
    x, y = _pixel_grid(frame_size_px)
    x, y = x[0], y[0]
    s, (ox, oy) = style.body_scale, style.body_offset_xy

    def tx(v):
        return 0.5 + s * (v - 0.5) + ox

    def ty(v):
        return 0.5 + s * (v - 0.5) + oy

    img = np.broadcast_to(style.background_rgb, (frame_size_px, frame_size_px, 3)).copy()

    def paint(sdf, rgb):
        a = _coverage(sdf, frame_size_px)[..., None]
        img[:] += a * (rgb - img)

    torso = np.minimum(_sdf_capsule(x, y, tx(0.36), ty(0.46), tx(0.64), ty(0.46), 0.07 * s),
                       _sdf_box(x, y, tx(0.29), ty(0.46), tx(0.71), 1.2))
    paint(_sdf_ellipse(x, y, tx(0.5), ty(0.2), 0.105 * s, 0.115 * s), style.hair_rgb)
    paint(_sdf_box(x, y, tx(0.465), ty(0.28), tx(0.535), ty(0.42)), style.skin_rgb * 0.88)  # neck, shaded
    paint(torso, style.shirt_rgb)
    paint(_sdf_capsule(x, y, tx(0.45), ty(0.4), tx(0.5), ty(0.46), 0.012 * s), style.skin_rgb * 0.88)  # collar
    paint(_sdf_capsule(x, y, tx(0.55), ty(0.4), tx(0.5), ty(0.46), 0.012 * s), style.skin_rgb * 0.88)
    paint(_sdf_ellipse(x, y, tx(0.5), ty(0.235), 0.088 * s, 0.102 * s), style.skin_rgb)
    for ex in (0.465, 0.535):
        paint(_sdf_ellipse(x, y, tx(ex), ty(0.225), 0.011 * s, 0.013 * s), np.float32([0.1, 0.08, 0.08]))
    paint(_sdf_capsule(x, y, tx(0.48), ty(0.29), tx(0.52), ty(0.29), 0.007 * s), style.skin_rgb * 0.6)
    return img


def _speed_jittered_spans(num_glosses: int, num_frames: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Frame spans [start, end) per gloss: an even split with +-15 % duration jitter, >= 1 frame each."""
    weights = 1.0 + rng.uniform(-0.15, 0.15, num_glosses)
    bounds = np.round(np.cumsum(np.concatenate([[0.0], weights])) / weights.sum() * num_frames).astype(int)
    for i in range(1, num_glosses + 1):  # keep every span non-empty even for tiny num_frames
        bounds[i] = min(max(bounds[i], bounds[i - 1] + 1), num_frames - (num_glosses - i))
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(num_glosses)]


def sentence_trajectory(glosses: list[str], num_frames: int, rng: np.random.Generator | None = None):
    """(hand_xy (T, 2, 2) canonical body coords, gloss_spans). With `rng`: speed, time-warp and
    amplitude jitter; without: the even split of `reference_trajectory` pieces."""
    if not 1 <= len(glosses) <= num_frames:
        raise ValueError(f"need 1..num_frames={num_frames} glosses, got {glosses}")
    unknown = [g for g in glosses if g not in _GLOSS_TABLE]
    if unknown:
        raise ValueError(f"unknown glosses {unknown}; see data.signer.GLOSSES")
    if rng is None:
        spans = [(round(i * num_frames / len(glosses)), round((i + 1) * num_frames / len(glosses)))
                 for i in range(len(glosses))]
    else:
        spans = _speed_jittered_spans(len(glosses), num_frames, rng)
    xy = np.zeros((num_frames, 2, 2), np.float32)
    for gloss, (start, end) in zip(glosses, spans):
        phase = _frame_phases(end - start)
        keys = _hand_keyframes(_GLOSS_TABLE[gloss][0])
        if rng is not None:
            # Mild non-uniform speed inside the sign; endpoints stay on the rest pose.
            phase = np.clip(phase + rng.uniform(-0.06, 0.06) * np.sin(np.pi * phase), 0, 1)
            amp = rng.uniform(0.92, 1.08)
            keys = [REST_XY[h] + amp * (k - REST_XY[h]) + rng.uniform(-0.01, 0.01, k.shape)
                    for h, k in enumerate(keys)]
        for h in range(2):
            xy[start:end, h] = _path_at(keys[h], REST_XY[h], phase)
    return xy, spans


def render_sentence(glosses: list[str], num_frames: int, frame_size_px: int,
                    rng: np.random.Generator) -> dict:
    """Render a sentence of glosses with a random style drawn from `rng`.

    Returns dict: video uint8 (T, H, W, 3); hand_xy float32 (T, 2, 2) [right, left] hand centres
    (x, y) in [0, 1] of the frame; hand_visible bool (T, 2) (at least half of the glove unoccluded);
    gloss_spans list of (start_frame, end_frame) per gloss, end exclusive; style (Style)."""
    style = sample_style(rng)
    body_xy, spans = sentence_trajectory(glosses, num_frames, rng)
    s, off = style.body_scale, style.body_offset_xy
    hand_xy = (0.5 + s * (body_xy - 0.5) + off).astype(np.float32)  # (T, 2, 2)
    shoulders = 0.5 + s * (SHOULDER_XY - 0.5) + off
    radius = s * np.float32([HAND_RADIUS[_GLOSS_TABLE[g][0].shape] for g in glosses])
    hand_radius = np.empty(num_frames, np.float32)
    for r, (start, end) in zip(radius, spans):
        hand_radius[start:end] = r

    px = frame_size_px
    x, y = _pixel_grid(px)
    # Channel-first canvas (3, T, H, W): blending then runs long contiguous loops, not length-3 ones.
    canvas = np.repeat(_static_layer(style, px).transpose(2, 0, 1)[:, None], num_frames, axis=1)
    # Sleeves contrast with the torso so arms in front of it read clearly: darker, or lighter on dark shirts.
    shirt = style.shirt_rgb
    sleeve = shirt * 0.72 if shirt.mean() > 0.3 else shirt + 0.45 * (0.55 - shirt)
    cov_hand, vis_hand = [None, None], [None, None]
    elbows = np.zeros((num_frames, 2, 2), np.float32)
    for hand, outward in ((1, 1.0), (0, -1.0)):  # left first: the right (dominant) hand is in front
        h = hand_xy[:, hand]
        e = elbows[:, hand] = _elbows(shoulders[hand], h, outward, s)
        col = lambda a: a[:, None, None]  # noqa: E731  (T,) -> (T, 1, 1)
        arm = np.minimum(  # upper arm and forearm share a colour: one layer
            _sdf_capsule(x, y, shoulders[hand, 0], shoulders[hand, 1], col(e[:, 0]), col(e[:, 1]), 0.042 * s),
            _sdf_capsule(x, y, col(e[:, 0]), col(e[:, 1]), col(h[:, 0]), col(h[:, 1]), 0.034 * s))
        glove = np.sqrt((x - col(h[:, 0])) ** 2 + (y - col(h[:, 1])) ** 2) - col(hand_radius)
        for sdf, rgb, is_glove in ((arm, sleeve, False), (glove, HAND_RGB[hand], True)):
            a = _coverage(sdf, px)
            for c in range(3):
                canvas[c] += a * (rgb[c] - canvas[c])
            for other in range(2):
                if vis_hand[other] is not None:
                    vis_hand[other] = vis_hand[other] * (1 - a)
            if is_glove:
                cov_hand[hand] = vis_hand[hand] = a
    visible = np.stack([vis_hand[h].sum((1, 2)) >= 0.5 * cov_hand[h].sum((1, 2)) for h in range(2)], 1)
    video = np.ascontiguousarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 3, 0))
    pose_xy, pose_visible = _skeleton(style, shoulders, elbows, hand_xy, hand_radius)
    return dict(video=video, hand_xy=hand_xy, hand_visible=visible, pose_xy=pose_xy,
                pose_visible=pose_visible, gloss_spans=spans, style=style)


def _skeleton(style: Style, shoulders: np.ndarray, elbows: np.ndarray, hand_xy: np.ndarray,
              hand_radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The signer's own reduced skeleton (data/skeleton.py): (T, NUM_POINTS, 2) frame units and
    (T, NUM_POINTS) visibility. Head, neck, shoulders, elbows and hand centres are exact; the wrist
    sits on the forearm one glove radius from the hand centre; there are no fingers (never visible).
    Hands behind the other arm still count as visible: the skeleton is what the renderer drew from."""
    s, (ox, oy) = style.body_scale, style.body_offset_xy
    t = len(hand_xy)
    xy = np.zeros((t, skeleton.NUM_POINTS, 2), np.float32)
    xy[:, skeleton.INDEX["nose"]] = 0.5 + s * (np.float32([0.5, 0.235]) - 0.5) + [ox, oy]
    xy[:, skeleton.INDEX["neck"]] = 0.5 + s * (np.float32([0.5, 0.42]) - 0.5) + [ox, oy]
    for side in range(2):  # 0 = right, 1 = left, the order of every hand array
        forearm = hand_xy[:, side] - elbows[:, side]
        unit = forearm / np.maximum(np.linalg.norm(forearm, axis=1, keepdims=True), 1e-6)
        xy[:, skeleton.SHOULDERS[side]] = shoulders[side]
        xy[:, skeleton.INDEX[("right_elbow", "left_elbow")[side]]] = elbows[:, side]
        xy[:, skeleton.WRISTS[side]] = hand_xy[:, side] - unit * hand_radius[:, None]
        xy[:, skeleton.HANDS[side]] = hand_xy[:, side]
    visible = np.ones((t, skeleton.NUM_POINTS), bool)
    visible[:, list(skeleton.FINGERTIPS)] = False
    return xy, visible
