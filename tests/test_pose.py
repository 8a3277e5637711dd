"""The pose stage (pose_cond): heatmaps, how the denoiser uses them, its loss, and that it learns."""
import pytest
import torch

from config import ConfigError, make_config
from data import build_dataset
from data.text import Collate, Tokenizer
from diffusion.text2sign import Text2SignDiffusion, q_sample
from models import build_model
from models.architectures.pose import HEATMAP_SIGMA, TRAVEL_LOSS_WEIGHT, hand_heatmaps


def test_heatmap_peaks_at_each_hand_and_falls_off_as_a_gaussian():
    size = 16
    xy = torch.tensor([[[[0.27, 0.77], [0.8, 0.1]]]])  # (B=1, T=1, hands=2, 2)
    heat = hand_heatmaps(xy, size)
    assert heat.shape == (1, 2, 1, size, size)
    for hand, (x, y) in enumerate(xy[0, 0].tolist()):
        row, col = divmod(int(heat[0, hand, 0].argmax()), size)
        assert (col, row) == (int(x * size), int(y * size))
    # A pixel centre at distance d from the centre holds exp(-d^2 / (2 sigma^2)).
    d2 = ((4 + 0.5) / size - 0.27) ** 2 + ((12 + 0.5) / size - 0.77) ** 2
    assert heat[0, 0, 0, 12, 4].item() == pytest.approx(torch.exp(torch.tensor(-d2 / (2 * HEATMAP_SIGMA**2))).item())


def _pose_model(seed=0):
    cfg = make_config("tiny", dict(pose_cond=True))
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
    hand_xy = torch.rand(batch, cfg.num_frames, 2, 2, generator=gen)
    return x, t, tokens, torch.ones_like(tokens, dtype=torch.bool), hand_xy


def test_denoiser_follows_the_heatmaps_except_under_the_null_condition():
    cfg, model = _pose_model()
    x, t, tokens, mask, hand_xy = _inputs(cfg)
    a = model(x, t, tokens, mask, hand_xy=hand_xy)
    b = model(x, t, tokens, mask, hand_xy=1 - hand_xy)
    assert not torch.allclose(a, b)  # the hand positions reach the output
    assert torch.equal(model(x, t, tokens, mask), model(x, t, tokens, mask, hand_xy=model(
        x, t, tokens, mask, return_pose=True)[1]))  # no hand_xy: the stage's own prediction
    drop = torch.ones(2, dtype=torch.bool)
    assert torch.equal(model(x, t, tokens, mask, drop, hand_xy=hand_xy),
                       model(x, t, tokens, mask, drop, hand_xy=1 - hand_xy))  # null text: no pose
    out, pose = model(x, t, tokens, mask, return_pose=True)
    assert out.shape == x.shape and pose.shape == (2, cfg.num_frames, 2, 2)
    assert torch.equal(model.predict_pose(tokens, mask), pose)


def test_model_without_pose_stage_rejects_hand_positions():
    cfg = make_config("tiny")
    x, t, tokens, mask, hand_xy = _inputs(cfg)
    with pytest.raises(ValueError, match="pose_cond"):
        build_model(cfg, 50)(x, t, tokens, mask, hand_xy=hand_xy)


def test_pose_loss_is_the_weighted_mse_of_the_clips_that_kept_their_text():
    cfg, model = _pose_model()
    x0, _, tokens, mask, hand_xy = _inputs(cfg)
    diffusion = Text2SignDiffusion.from_config(make_config("tiny", dict(pose_cond=True, pose_loss_weight=7.0)))
    t, noise = torch.tensor([3, 30]), torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    drop = torch.tensor([False, True])
    result = diffusion.training_losses(model, x0, tokens, mask, draws=(t, noise, drop), hand_xy=hand_xy)
    out, pose = model(q_sample(diffusion.sched, x0, t, noise), t, tokens, mask, drop, hand_xy=hand_xy,
                      return_pose=True)
    by_hand = ((pose[0] - hand_xy[0]) ** 2).mean()  # clip 1 dropped its text: not scored
    assert result["pose_mse"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    travel = [sum((xy[f + 1, h] - xy[f, h]).norm() for f in range(cfg.num_frames - 1) for h in range(2))
              for xy in (pose[0], hand_xy[0])]
    pose_loss = by_hand + TRAVEL_LOSS_WEIGHT * (travel[0] - travel[1]) ** 2
    denoise = (result["per_sample"] * diffusion.loss_weights(t)).mean()
    assert result["loss"].item() == pytest.approx(denoise.item() + 7.0 * pose_loss.item(), rel=1e-5)


def test_pose_stage_learns_hand_positions_from_text():
    cfg = make_config("tiny", dict(pose_cond=True, num_train_samples=64, lr=3e-3))
    data = build_dataset(cfg, "train")
    tokenizer = Tokenizer.from_captions(data.captions)
    batch = Collate(tokenizer, cfg.max_text_len_tokens)([data[i] for i in range(32)])
    torch.manual_seed(0)
    model = build_model(cfg, len(tokenizer))
    diffusion = Text2SignDiffusion.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(40):
        result = diffusion.training_losses(model, batch["video"], batch["tokens"], batch["token_mask"],
                                           generator=gen, hand_xy=batch["hand_xy"])
        opt.zero_grad()
        result["loss"].backward()
        opt.step()
        first = first or result["pose_mse"].item()
    assert result["pose_mse"].item() < first / 3, (first, result["pose_mse"].item())


def test_pose_cond_needs_a_dataset_with_hand_positions():
    with pytest.raises(ConfigError, match="pose_cond"):
        make_config("tiny", dict(pose_cond=True, dataset="folder", data_root="/tmp"))


def test_truth_mask_shows_the_prediction_where_false_and_training_uses_it_below_min_t():
    cfg, model = _pose_model()
    x, t, tokens, mask, hand_xy = _inputs(cfg)
    pred = model.predict_pose(tokens, mask)
    mixed = model(x, t, tokens, mask, hand_xy=hand_xy, truth_mask=torch.tensor([True, False]))
    by_hand = model(x, t, tokens, mask, hand_xy=torch.stack([hand_xy[0], pred[1]]))
    assert torch.equal(mixed, by_hand)
    # Training: below pose_truth_min_t the heatmaps show the prediction (t = [3, 30] here).
    diffusion = Text2SignDiffusion.from_config(make_config("tiny", dict(pose_cond=True, pose_truth_min_t=10)))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    draws = (torch.tensor([3, 30]), noise, torch.tensor([False, False]))
    got = diffusion.training_losses(model, x.clamp(-1, 1), tokens, mask, draws=draws, hand_xy=hand_xy)
    x_t = q_sample(diffusion.sched, x.clamp(-1, 1), draws[0], noise)
    want = model(x_t, draws[0], tokens, mask, draws[2], hand_xy=torch.stack([pred[0], hand_xy[1]]))
    target = x.clamp(-1, 1)
    assert got["per_sample"][0].item() == pytest.approx(((want - target) ** 2)[0].mean().item(), rel=1e-5)
