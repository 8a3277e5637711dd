"""The pose stage (pose_cond): the rendered pose map, how the denoiser uses it, its loss, and that it learns."""
import pytest
import torch

from config import make_config
from data import build_dataset, check_dataset
from data.skeleton import INDEX, NUM_POINTS, stage_layout
from data.text import Collate, Tokenizer
from diffusion import build_diffusion, build_objective
from models import build_model
from models.architectures.pose import HEATMAP_SIGMA, PoseStage, TRAVEL_LOSS_WEIGHT, VISIBILITY_LOSS_WEIGHT, pose_losses, render_pose


def test_joint_blobs_peak_at_each_point_and_fall_off_as_a_gaussian():
    size = 16
    xy = torch.tensor([[[[0.27, 0.77], [0.8, 0.1]]]])  # (B=1, T=1, points=2, 2)
    heat = render_pose(xy, torch.ones(1, 1, 2, dtype=torch.bool), [([0], []), ([1], [])], size)
    assert heat.shape == (1, 2, 1, size, size)
    for point, (x, y) in enumerate(xy[0, 0].tolist()):
        row, col = divmod(int(heat[0, point, 0].argmax()), size)
        assert (col, row) == (int(x * size), int(y * size))
    # A pixel centre at distance d from the point holds exp(-d^2 / (2 sigma^2)).
    d2 = ((4 + 0.5) / size - 0.27) ** 2 + ((12 + 0.5) / size - 0.77) ** 2
    assert heat[0, 0, 0, 12, 4].item() == pytest.approx(torch.exp(torch.tensor(-d2 / (2 * HEATMAP_SIGMA**2))).item())


def test_limbs_draw_lines_and_invisible_points_draw_nothing():
    size = 32
    xy = torch.tensor([[[[0.2, 0.5], [0.8, 0.5], [0.5, 0.9]]]])
    visible = torch.tensor([[[True, True, False]]])
    maps = render_pose(xy, visible, [([0, 1, 2], [(0, 1), (1, 2)])], size)[0, 0, 0]
    row = int(0.5 * size)
    assert maps[row, int(0.5 * size)] > 0.95  # the middle of the visible limb 0-1 is on the line
    assert maps[int(0.9 * size), int(0.5 * size)] < 1e-3  # point 2 is invisible: no blob
    assert maps[int(0.7 * size), int(0.65 * size)] < 1e-3  # and no limb 1-2
    assert render_pose(xy, torch.zeros_like(visible), [([0, 1, 2], [(0, 1)])], size).max() == 0


@pytest.mark.parametrize("kind", ["hands", "full"])
def test_stage_layouts_index_the_skeleton(kind):
    points, groups, hands = stage_layout(kind)
    assert [points[h] for h in hands] == [INDEX["right_hand"], INDEX["left_hand"]]
    for joints, limbs in groups:
        assert all(0 <= j < len(points) for j in joints)
        assert all(a in joints and b in joints for a, b in limbs)
    assert len(points) == (2 if kind == "hands" else NUM_POINTS)


def _pose_model(seed=0, kind="hands"):
    # No temporal blend: the loss checks below read the one output's fit (the blend's is tested apart).
    cfg = make_config("tiny", dict(pose_skeleton=kind, pixel_temporal_blend=False))
    torch.manual_seed(seed)
    model = build_model(cfg, 50)
    with torch.no_grad():  # a trained-looking head: the zero-init one outputs 0 for any input
        model.head.out.weight.normal_(0, 0.3)
    return cfg, model


def _inputs(cfg, batch=2):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px, generator=gen)
    t = torch.tensor([5, 40][:batch])
    tokens = torch.randint(2, 50, (batch, 5), generator=gen)
    pose_xy = torch.rand(batch, cfg.num_frames, NUM_POINTS, 2, generator=gen)
    visible = torch.ones(batch, cfg.num_frames, NUM_POINTS, dtype=torch.bool)
    return x, t, tokens, torch.ones_like(tokens, dtype=torch.bool), pose_xy, visible


@pytest.mark.parametrize("kind", ["hands", "full"])
def test_denoiser_follows_the_pose_map_except_under_the_null_condition(kind):
    cfg, model = _pose_model(kind=kind)
    x, t, tokens, mask, pose_xy, visible = _inputs(cfg)
    a = model(x, t, tokens, mask, pose_xy=pose_xy, pose_visible=visible)
    b = model(x, t, tokens, mask, pose_xy=1 - pose_xy, pose_visible=visible)
    assert not torch.allclose(a, b)  # the keypoints reach the output
    pred, pred_visible = model.predict_pose(tokens, mask)
    full = torch.zeros_like(pose_xy)
    full[:, :, model.pose_points] = pred
    full_vis = torch.zeros_like(visible)
    full_vis[:, :, model.pose_points] = pred_visible
    # no keypoints given: the map shows the stage's own prediction
    assert torch.equal(model(x, t, tokens, mask), model(x, t, tokens, mask, pose_xy=full, pose_visible=full_vis))
    drop = torch.ones(2, dtype=torch.bool)
    assert torch.equal(model(x, t, tokens, mask, drop, pose_xy=pose_xy, pose_visible=visible),
                       model(x, t, tokens, mask, drop, pose_xy=1 - pose_xy, pose_visible=visible))  # null text: no pose
    assert pred.shape == (2, cfg.num_frames, len(model.pose_points), 2)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_sample_encodes_its_text_once_and_equals_the_sample_that_encodes_it_at_every_step(guidance):
    cfg, model = _pose_model()
    model.eval()
    diffusion = build_diffusion(cfg, torch.device("cpu"))
    _, _, tokens, mask, _, _ = _inputs(cfg)
    shape = (2, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    calls = []
    hook = model.text.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))

    def sample(m):
        return diffusion.sample(m, tokens, mask, shape, steps=4, guidance_scale=guidance,
                                generator=torch.Generator().manual_seed(3))

    cached = sample(model)
    assert calls == [2 if guidance == 1.0 else 4]  # once per sample (the guided batch holds both texts)
    calls.clear()
    every_step = sample(lambda *args, **kw: model(*args, **kw))  # no encode_condition: the text at each step
    hook.remove()
    assert len(calls) == 4
    assert torch.equal(cached, every_step)


def test_forward_with_an_encoded_condition_equals_the_plain_forward_and_refuses_the_training_losses():
    cfg, model = _pose_model(kind="full")
    x, t, tokens, mask, pose_xy, visible = _inputs(cfg)
    drop = torch.tensor([False, True])
    for keypoints in ({}, dict(pose_xy=pose_xy, pose_visible=visible)):
        condition = model.encode_condition(tokens, mask, drop, **keypoints)
        assert torch.equal(model(x, t, tokens, mask, drop, **keypoints), model(x, t, tokens, mask, condition=condition))
    with pytest.raises(ValueError, match="return_aux"):
        model(x, t, tokens, mask, pose_xy=pose_xy, pose_visible=visible, return_aux=True, condition=condition)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_pose_stage_layers_let_each_frame_see_the_others_and_only_with_them(depth):
    """pose_depth: with layers over the frames, a change in one frame's regulated features moves the
    keypoints of every frame; without them, each frame's keypoints depend on its own features alone."""
    torch.manual_seed(0)
    stage = PoseStage(16, 6, 3, 2.0, heads=2, depth=depth)
    torch.nn.init.normal_(stage.head.weight, std=0.1)  # zero at init: the output would not move at all
    assert len(stage.layers) == depth
    features = torch.randn(1, 6, 16)
    moved = features.clone()
    moved[:, 0] += torch.randn(16)  # not a constant: the layers' LayerNorms would remove it
    stage.regulator.forward = lambda ctx, mask: ctx  # feed the per-frame features directly
    mask = torch.ones(1, 6, dtype=torch.bool)
    with torch.no_grad():
        before, after = stage(features, mask)[0], stage(moved, mask)[0]
    change = (after - before).abs().amax(dim=(0, 2, 3))  # per frame
    assert change[0] > 1e-3
    if depth:
        assert (change[1:] > 1e-5).all()
    else:
        assert (change[1:] == 0).all()


def test_model_without_pose_stage_rejects_keypoints():
    cfg = make_config("tiny", dict(pose_cond=False))
    x, t, tokens, mask, pose_xy, visible = _inputs(cfg)
    with pytest.raises(ValueError, match="pose_cond"):
        build_model(cfg, 50)(x, t, tokens, mask, pose_xy=pose_xy, pose_visible=visible)


def test_pose_losses_by_hand_and_invisible_points_do_not_count():
    gen = torch.Generator().manual_seed(0)
    pred, truth = torch.rand(2, 4, 3, 2, generator=gen), torch.rand(2, 4, 3, 2, generator=gen)
    logits = torch.randn(2, 4, 3, generator=gen)
    visible = torch.ones(2, 4, 3, dtype=torch.bool)
    visible[0, :, 2] = False
    terms = pose_losses(pred, logits, truth, visible, hands=[0, 1])
    mse0 = ((pred[0, :, :2] - truth[0, :, :2]) ** 2).mean()  # point 2 of clip 0 is invisible
    assert terms["pose_mse"][0].item() == pytest.approx(mse0.item(), rel=1e-5)
    moved = truth.clone()
    moved[0, :, 2] += 5.0  # moving an invisible point changes nothing
    assert torch.equal(pose_losses(pred, logits, moved, visible, [0, 1])["pose_mse"], terms["pose_mse"])
    travel = [sum((xy[f + 1, h] - xy[f, h]).norm() for f in range(3) for h in range(2)) for xy in (pred[1], truth[1])]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[1], torch.ones(4, 3))
    hands1, body1 = ((pred[1, :, :2] - truth[1, :, :2]) ** 2).mean(), ((pred[1, :, 2] - truth[1, :, 2]) ** 2).mean()
    expected = hands1 + body1 + TRAVEL_LOSS_WEIGHT * (travel[0] - travel[1]) ** 2 + VISIBILITY_LOSS_WEIGHT * bce
    assert terms["pose"][1].item() == pytest.approx(expected.item(), rel=1e-5)


def test_pose_loss_weighs_the_hand_centres_as_much_as_the_rest_of_the_skeleton():
    truth = torch.rand(1, 4, 10, 2, generator=torch.Generator().manual_seed(0))
    visible, logits = torch.ones(1, 4, 10, dtype=torch.bool), torch.full((1, 4, 10), 9.0)
    hands_off, body_off = truth.clone(), truth.clone()
    hands_off[:, :, [8, 9]] += 0.1  # both hands off by 0.1, travel unchanged
    body_off[:, :, :8] += 0.1  # the eight other points off by 0.1
    by_hands, by_body = (pose_losses(p, logits, truth, visible, hands=[8, 9]) for p in (hands_off, body_off))
    assert by_hands["pose"].item() == pytest.approx(by_body["pose"].item(), rel=1e-5)
    assert by_hands["pose_mse"].item() == pytest.approx(by_body["pose_mse"].item() / 4, rel=1e-5)  # the plain mean


def test_pose_term_joins_the_loss_on_the_clips_that_kept_their_text():
    cfg, model = _pose_model()
    cfg = make_config("tiny", dict(pose_loss_weight=7.0, temporal_diff_loss_weight=0.0,  # the plain MSE part
                                   pixel_temporal_blend=False))
    x0, _, tokens, mask, pose_xy, visible = _inputs(cfg)
    diffusion = build_diffusion(cfg)
    objective = build_objective(cfg, diffusion)
    t, noise = torch.tensor([3, 30]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    drop = torch.tensor([False, True])
    result = objective(model, x0, tokens, mask, (t, noise, drop), dict(pose_xy=pose_xy, pose_visible=visible))
    pred, logits = model.pose(*model.text(tokens, mask, drop))
    points = model.pose_points
    by_hand = pose_losses(pred, logits, pose_xy[:, :, points], visible[:, :, points], model.pose_hands)
    assert result.aux_mean("pose_mse") == pytest.approx(by_hand["pose_mse"][0].item(), rel=1e-5)  # clip 1 dropped
    denoise = (result.per_sample * objective.weights(t)).mean()
    assert result.loss.item() == pytest.approx(denoise.item() + 7.0 * by_hand["pose"][0].item() / 2, rel=1e-5)


def test_pose_stage_learns_keypoints_from_text():
    cfg = make_config("tiny", dict(num_train_samples=64, lr=3e-3, pose_skeleton="full"))
    data = build_dataset(cfg, "train")
    tokenizer = Tokenizer.from_captions(data.captions)
    batch = Collate(tokenizer, cfg.max_text_len_tokens)([data[i] for i in range(32)])
    torch.manual_seed(0)
    model = build_model(cfg, len(tokenizer))
    objective = build_objective(cfg, build_diffusion(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    cond = dict(pose_xy=batch["pose_xy"], pose_visible=batch["pose_visible"])
    first = None
    for _ in range(60):  # 40 left 0.8% of the fingertip flags on under uniform t (row 57's draws)
        draws = objective.draw(tuple(batch["video"].shape), gen)
        result = objective(model, batch["video"], batch["tokens"], batch["token_mask"], draws, cond)
        opt.zero_grad()
        result.loss.backward()
        opt.step()
        first = first or result.aux_mean("pose_mse")
    assert result.aux_mean("pose_mse") < first / 3, (first, result.aux_mean("pose_mse"))
    _, visible = model.predict_pose(batch["tokens"], batch["token_mask"])  # fingertips: never in the data
    assert not visible[..., list(range(10, 20))].any() and visible[..., :10].all()


def test_pose_cond_needs_a_dataset_with_keypoints():
    cfg = make_config("tiny")

    class NoKeypoints(torch.utils.data.Dataset):
        def __getitem__(self, i):
            return dict(video=torch.zeros(3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px), caption="hi")

    with pytest.raises(ValueError, match="no keypoints"):
        check_dataset(cfg, NoKeypoints())
    check_dataset(make_config("tiny", dict(pose_cond=False)), NoKeypoints())
