"""Pose output and the field's pose metrics: the .pose writer, shoulder normalisation, DTW-MJE, total
distance, duration ratio and the same-text floor (data/pose_io.py, evaluation/pose_metrics.py)."""
import numpy as np
import pytest
from pose_format import Pose

from data import skeleton
from data.pose_io import COMPONENT, read_pose, write_pose
from data.real.common import DatasetError
from data.synthetic import SyntheticSignDataset
from evaluation.pose_metrics import (dtw_mje, dtw_mje_floor, dtw_path, duration_ratio, normalize_skeleton,
                                     pose_metrics, total_distance)


def _clip(index=3, split="train", num_frames=12):
    item = SyntheticSignDataset(split, 40, num_frames, 16, seed=0)[index]
    return item["pose_xy"].numpy(), item["pose_visible"].numpy()


def test_pose_file_round_trips_through_pose_format(tmp_path):
    xy, vis = _clip()
    vis = vis.copy()
    vis[2, skeleton.HANDS[0]] = False  # a hand lost in one frame
    path = str(tmp_path / "clip.pose")
    write_pose(path, xy, vis, fps=12.5, frame_wh_px=(320, 240))

    pose = Pose.read(open(path, "rb").read())  # pose-format's own reader
    (component,) = pose.header.components
    assert component.name == COMPONENT and tuple(component.points) == skeleton.POINTS
    assert [tuple(limb) for limb in component.limbs] == list(skeleton.LIMBS)
    assert len(component.colors) == skeleton.NUM_POINTS
    assert (pose.header.dimensions.width, pose.header.dimensions.height) == (320, 240)
    assert pose.body.fps == pytest.approx(12.5)
    assert pose.body.data.shape == (len(xy), 1, skeleton.NUM_POINTS, 2)
    np.testing.assert_array_equal(pose.body.confidence[:, 0], vis.astype(np.float32))
    np.testing.assert_array_equal(pose.body.data.mask[:, 0, :, 0], ~vis)  # invisible = masked
    np.testing.assert_allclose(pose.body.data.data[:, 0][vis], (xy * [320, 240])[vis], rtol=1e-6)

    xy2, vis2, fps, wh = read_pose(path)
    np.testing.assert_array_equal(vis2, vis)
    np.testing.assert_allclose(xy2[vis], xy[vis], atol=1e-6)
    assert (xy2[~vis] == 0).all() and fps == pytest.approx(12.5) and wh == (320, 240)


def test_read_pose_rejects_another_skeleton(tmp_path):
    from pose_format.utils.generic import fake_pose

    path = tmp_path / "other.pose"
    with open(path, "wb") as f:
        fake_pose(num_frames=3).write(f)
    with pytest.raises(DatasetError, match="expected the single component"):
        read_pose(str(path))
    (tmp_path / "junk.pose").write_bytes(b"not a pose")
    with pytest.raises(DatasetError, match="not a readable .pose"):
        read_pose(str(tmp_path / "junk.pose"))


def test_normalisation_makes_shoulder_width_one_and_skips_frames_without_both_shoulders():
    xy, vis = _clip()
    xy, vis = xy * 0.7 + 0.1, vis.copy()  # a smaller signer elsewhere in the frame
    clean = normalize_skeleton(xy, vis)
    r, l = clean[:, skeleton.SHOULDERS[0]], clean[:, skeleton.SHOULDERS[1]]
    assert np.linalg.norm(r - l, axis=1).mean() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(((r + l) / 2).mean(0), 0.0, atol=1e-5)
    # A frame whose left shoulder is lost (and holds garbage) must not move the others.
    broken_xy, broken_vis = xy.copy(), vis.copy()
    broken_xy[4, skeleton.SHOULDERS[1]] = (0.99, 0.01)
    broken_vis[4, skeleton.SHOULDERS[1]] = False
    broken = normalize_skeleton(broken_xy, broken_vis)
    np.testing.assert_allclose(broken[broken_vis], clean[broken_vis], atol=1e-5)
    assert (broken[4, skeleton.SHOULDERS[1]] == 0).all()
    with pytest.raises(ValueError, match="both shoulders"):
        normalize_skeleton(xy, np.zeros_like(vis))


def test_dtw_path_is_the_minimum_cost_monotone_path():
    rng = np.random.default_rng(0)
    for n, m in [(1, 1), (1, 5), (6, 1), (7, 4), (5, 9)]:
        cost = rng.random((n, m))
        acc = np.full((n + 1, m + 1), np.inf)  # textbook DP, cell by cell
        acc[0, 0] = 0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                acc[i, j] = cost[i - 1, j - 1] + min(acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
        i, j = dtw_path(cost)
        assert (i[0], j[0], i[-1], j[-1]) == (0, 0, n - 1, m - 1)
        steps = np.stack([np.diff(i), np.diff(j)], 1).tolist()
        assert all(s in ([1, 1], [1, 0], [0, 1]) for s in steps)
        assert cost[i, j].sum() == pytest.approx(acc[n, m])


def test_dtw_mje_zero_for_identical_and_time_warped_clips_and_grows_with_an_offset():
    xy, vis = _clip()
    assert dtw_mje(xy, vis, xy, vis) == 0.0
    warp = np.array([0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 11])  # holds and repeats
    assert dtw_mje(xy[warp], vis[warp], xy, vis) == pytest.approx(0.0, abs=1e-6)
    width_fu = np.linalg.norm(xy[:, skeleton.SHOULDERS[0]] - xy[:, skeleton.SHOULDERS[1]], axis=1).mean()
    counted = int(vis[0].sum())  # joints visible in every frame of both clips
    errors = []
    for offset in (0.01, 0.02, 0.04):
        moved = xy.copy()
        moved[:, skeleton.HANDS, 0] += offset  # both hand centres, shoulders untouched
        errors.append(dtw_mje(moved, vis, xy, vis))
    assert errors[0] < errors[1] < errors[2]
    # Small offsets keep the diagonal alignment: 2 of the counted joints are off by offset/width.
    assert errors[0] == pytest.approx(2 * 0.01 / width_fu / counted, rel=1e-3)


def test_dtw_mje_pools_aligned_pairs_over_clips_and_ignores_invisible_joints():
    a, va = _clip(3)
    b, vb = _clip(7)
    pooled = dtw_mje([a, a], [va, va], [a, b], [va, vb])
    assert 0 < pooled < dtw_mje(a, va, b, vb)  # the identical pair adds aligned pairs with error 0
    garbage = a.copy()
    garbage[:, list(skeleton.FINGERTIPS)] = 5.0  # never visible on the synthetic signer
    assert dtw_mje(garbage, va, b, vb) == pytest.approx(dtw_mje(a, va, b, vb))


def test_total_distance_one_for_identical_hands_zero_for_a_frozen_pose():
    xy, vis = _clip()
    assert total_distance(xy, vis, xy, vis) == pytest.approx(1.0)
    frozen = np.repeat(xy[:1], len(xy), 0)
    assert total_distance(frozen, vis, xy, vis) == 0.0
    half = xy.copy()  # hands halfway between rest (frame 0) and where they go: half the travel
    half[:, skeleton.HANDS] = 0.5 * (xy[:, skeleton.HANDS] + xy[:1, skeleton.HANDS])
    assert total_distance(half, vis, xy, vis) == pytest.approx(0.5, rel=1e-4)
    assert np.isnan(total_distance(xy, vis, frozen, vis))  # the reference does not move


def test_duration_ratio_and_metric_bundle():
    xy, vis = _clip()
    assert duration_ratio([8, 12], [16, 12]) == pytest.approx(0.75)
    out = pose_metrics([xy, xy[:6]], [vis, vis[:6]], [xy, xy], [vis, vis])
    assert out["duration_ratio"] == pytest.approx(0.75) and out["dtw_mje"] > 0
    with pytest.raises(ValueError, match="pair up"):
        duration_ratio([1, 2], [3])


def test_floor_pairs_clips_of_the_same_text():
    a, va = _clip(3)
    b, vb = _clip(7)
    out = dtw_mje_floor([a, b, a, b], [va, vb, va, vb], ["x", "y", "x", "z"])
    assert out == dict(dtw_mje=0.0, num_pairs=1)  # only the two "x" clips pair up
    out = dtw_mje_floor([a, b], [va, vb], ["x", "x"])
    assert out["num_pairs"] == 1 and out["dtw_mje"] == pytest.approx(dtw_mje(a, va, b, vb))
    assert np.isnan(dtw_mje_floor([a, b], [va, vb], ["x", "y"])["dtw_mje"])


def test_a_prediction_with_coincident_shoulders_is_measured_in_its_references_unit():
    """An untrained pose stage puts every point at one place: scored far off, not an exception."""
    ref_xy, ref_vis = _clip()
    flat = np.full_like(ref_xy, 0.5)
    vis = np.ones_like(ref_vis)
    err = dtw_mje(flat, vis, ref_xy, ref_vis)
    assert np.isfinite(err) and err > 0.3
    assert total_distance(flat, vis, ref_xy, ref_vis) == 0.0  # it does not move
