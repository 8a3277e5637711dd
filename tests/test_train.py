"""The training path end to end on the tiny preset."""
import json

import torch

import main as train_main
from checkpoint import checkpoint_paths, load_checkpoint
from config import make_config
from diffusion import build_diffusion, build_objective
from models import build_model
from training import PIXEL_PATH_PREFIXES, make_ema, param_groups


def test_tiny_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = make_config("tiny", dict(pose_cond=False))
    model = build_model(cfg, 20)
    objective = build_objective(cfg, build_diffusion(cfg))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px) * 2 - 1
    tokens, mask = torch.randint(2, 20, (4, 3)), torch.ones(4, 3, dtype=torch.bool)
    draws = objective.draw(tuple(x0.shape), gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = objective(model, x0, tokens, mask, draws).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_ema_follows_the_warmup_decay_and_skips_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = make_ema(model, decay=0.5)
    expected = None
    for n in range(4):  # n = n_averaged at the call; the first call copies the model
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        ema.update_parameters(model)
        d = min(0.5, (1 + n) / (10 + n))  # the warm-up term is the smaller one for n < 8
        new = model[0].weight.detach().clone()
        expected = new if expected is None else expected * d + new * (1 - d)
    torch.testing.assert_close(ema.module[0].weight, expected)
    assert not torch.allclose(ema.module[0].weight, model[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 4


def test_pixel_path_groups_cover_every_parameter_once():
    model = build_model(make_config("tiny", {}), 20)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.01, pixel_lr_mult=10.0)
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())
    for g in groups:
        pixel = {n.startswith(PIXEL_PATH_PREFIXES) for n in (names[id(p)] for p in g["params"])}
        assert pixel == {g["lr_mult"] == 10.0}, g["lr_mult"]
    assert {g["weight_decay"] for g in groups} == {0.0, 0.01}
    # multiplier 1: the two groups (decay, no decay) that checkpoints from before the key hold
    plain = param_groups(model, 0.01)
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0] and {g["lr_mult"] for g in plain} == {1.0}


def test_main_end_to_end_and_resume(tmp_path, capsys):
    args = ["--preset", "tiny", "--experiment_name", "e2e", "--output_dir", str(tmp_path),
            "--max_steps", "10", "--checkpoint_every_steps", "5", "--log_every_steps", "5"]
    assert train_main.main(args) == 0
    run = tmp_path / "e2e"
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert {"loss", "lr", "grad_norm", "samples_per_s", "loss_q1", "loss_q4"} <= set(records[0])
    assert list((run / "samples").glob("*.gif")) and list((run / "samples").glob("*.mp4"))
    paths = checkpoint_paths(run)
    state = load_checkpoint(paths[0])
    assert state["step"] == 10 and state["config"]["experiment_name"] == "e2e"
    # the pixel path trained at pixel_lr_mult times the schedule's LR, everything else at it (row 56)
    groups = state["optimizer"]["param_groups"]
    base = min(g["lr"] for g in groups)
    assert base > 0 and sorted({round(g["lr"] / base, 6) for g in groups}) == [1.0, 10.0]
    capsys.readouterr()
    assert train_main.main(args[:-6] + ["--max_steps", "12", "--checkpoint_every_steps", "5",
                                        "--log_every_steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "Resuming experiment 'e2e'" in out and "at step 10" in out
    assert load_checkpoint(checkpoint_paths(run)[0])["step"] == 12


def test_unknown_key_fails_before_work(tmp_path, capsys):
    code = train_main.main(["--experiment_name", "x", "--output_dir", str(tmp_path), "--max_stepz", "3"])
    assert code == 2
    assert "unknown config key 'max_stepz'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_dry_run_prints_resolved_config(capsys):
    assert train_main.main(["--preset", "tiny", "--dry-run", "--lr", "0.005"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.005" in out and "preset: tiny" in out
