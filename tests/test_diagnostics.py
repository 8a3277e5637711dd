"""The diagnostics: baselines, verdict, and both scripts end to end on the tiny preset."""
import json
import math

import pytest
import torch

import debug_vivit_sampling
import main as train_main
import quick_test_fixes
from config import make_config
from diffusion import build_diffusion
from diffusion.gaussian import GaussianDiffusion, Schedule
from evaluation.timesteps import (PASS_LINES, add_pose_gain, add_text_gain, baselines, seed_signature,
                                  timestep_table, verdict)
from models import build_model

T = 50


def _rows(eps_mse_by_t: dict[int, float], zero: float = 1.0, identity: float = 1.3) -> list[dict]:
    return [dict(t=t, eps_mse=e, zero_baseline=zero, identity_baseline=identity) for t, e in eps_mse_by_t.items()]


def _cosine_alphas_cumprod(t: int, num_timesteps: int = T) -> float:
    """Nichol & Dhariwal's ᾱ_t written out by hand (betas clipped at 0.999), independent of diffusion/."""
    f = [math.cos((s / num_timesteps + 0.008) / 1.008 * math.pi / 2) ** 2 for s in range(num_timesteps + 1)]
    ac = 1.0
    for s in range(t + 1):
        ac *= 1 - min(1 - f[s + 1] / f[s], 0.999)
    return ac


def test_baselines_match_a_hand_computation():
    x0 = torch.tensor([0.5, -1.0, 0.25, 0.0])
    noise = torch.tensor([1.0, 2.0, -0.5, 0.1])
    for t in (0, 25, 49):
        a = _cosine_alphas_cumprod(t)
        x_t = [math.sqrt(a) * x + math.sqrt(1 - a) * e for x, e in zip(x0.tolist(), noise.tolist())]
        zero, identity = baselines(torch.tensor(x_t, dtype=torch.float64), noise)
        assert zero == pytest.approx((1 + 4 + 0.25 + 0.01) / 4)
        assert identity == pytest.approx(sum((xt - e) ** 2 for xt, e in zip(x_t, noise.tolist())) / 4, rel=1e-6)


def test_table_columns_use_the_schedule_and_seeded_noise():
    cfg = make_config("tiny", dict(prediction_type="eps", pixel_temporal_blend=False))
    model, diffusion = build_model(cfg, 10), build_diffusion(cfg)
    videos = torch.rand(3, 3, cfg.num_frames, 16, 16) * 2 - 1
    tokens, mask = torch.full((3, 2), 2), torch.ones(3, 2, dtype=torch.bool)
    rows = timestep_table(model, diffusion, videos, tokens, mask, [0, 49], seed=7)
    for row in rows:
        a = _cosine_alphas_cumprod(row["t"])
        noise = torch.randn(videos.shape, generator=torch.Generator().manual_seed(7 * 100_003 + row["t"]))
        x_t = math.sqrt(a) * videos.double() + math.sqrt(1 - a) * noise.double()
        assert row["zero_baseline"] == pytest.approx(float(noise.double().pow(2).mean()), rel=1e-6)
        assert row["identity_baseline"] == pytest.approx(float((x_t - noise).pow(2).mean()), rel=1e-4)
        assert row["snr"] == pytest.approx(a / (1 - a), rel=1e-3)
        # Untrained zero-initialised head: eps = 0 exactly, so eps-MSE is the zero baseline, skill 0.
        assert row["eps_mse"] == pytest.approx(row["zero_baseline"], rel=1e-6)
        assert row["x0_mse"] == pytest.approx(row["eps_mse"] / row["snr"], rel=1e-3)
    v = verdict(rows, T)
    assert not v.passed and v.failures == ["not_trained_enough"] and not v.signature


def test_untrained_residual_model_reproduces_the_seed_signature():
    cfg = make_config("tiny", dict(prediction_type="eps", residual_input=True, pixel_temporal_blend=False))
    model, diffusion = build_model(cfg, 10), build_diffusion(cfg)
    videos = torch.rand(4, 3, 1, 1, 1).mul(2).sub(1).expand(4, 3, cfg.num_frames, 16, 16).contiguous()
    tokens, mask = torch.full((4, 2), 2), torch.ones(4, 2, dtype=torch.bool)
    rows = timestep_table(model, diffusion, videos, tokens, mask, [0, 10, 25, 40, 49])
    assert rows[0]["eps_mse"] > rows[0]["zero_baseline"]  # t=0: above predicting zero
    assert rows[-1]["eps_mse"] < rows[0]["eps_mse"] / 100  # t=49: far below t=0
    assert rows[0]["eps_mse"] == pytest.approx(rows[0]["identity_baseline"], rel=1e-5)
    v = verdict(rows, T)
    assert seed_signature(rows) and v.signature and not v.passed
    assert {"worse_than_zero", "low_timestep_degradation"} <= set(v.failures)
    assert any("tracks the identity" in line for line in v.lines)


@pytest.mark.parametrize("table", [
    {0: 1.92, 49: 0.001},  # the seed: "1920x worse at low timesteps"
    {0: 1.281, 49: 1.275},  # after the first fixes: "ratio 1.00x", called EXCELLENT
    {t: 1.92 * (1 - t / 49) + 0.001 for t in range(T)},  # the seed's shape at every timestep
    {t: 1.28 for t in range(T)},
])
def test_verdict_fails_both_seed_cases(table):
    v = verdict(_rows(table, identity=1.92), T)
    assert not v.passed
    assert "worse_than_zero" in v.failures
    assert not set(PASS_LINES) & set(v.lines)


def test_verdict_names_degradation_and_signature_for_the_first_seed_case():
    v = verdict(_rows({0: 1.92, 49: 0.001}), T)
    assert v.failures == ["worse_than_zero", "low_timestep_degradation"]
    assert v.signature and v.ratio == pytest.approx(1920)
    assert not verdict(_rows({0: 1.281, 49: 1.275}), T).signature


def test_verdict_passes_a_healthy_table_with_the_seed_lines():
    # eps-MSE naturally highest at small t (ratio ~100x) but below predicting zero everywhere.
    healthy = {t: 0.6 * math.exp(-t / 10) + 0.005 for t in range(T)}
    v = verdict(_rows(healthy), T)
    assert v.passed and v.failures == []
    assert v.lines[:2] == ["✅ EXCELLENT: Model performs well at all timesteps",
                           "   The low-timestep issue appears to be FIXED!"]
    assert v.ratio > 50


def test_verdict_flags_low_t_weakness_and_non_finite():
    v = verdict(_rows({0: 0.97, 5: 0.9, 49: 0.01}), T)
    assert not v.passed and v.failures == ["low_timestep_degradation", "not_trained_enough"]
    assert verdict(_rows({0: float("nan"), 49: 0.01}), T).failures == ["non_finite"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert train_main.main(["--preset", "tiny", "--max_steps", "4", "--experiment_name", "diag",
                            "--output_dir", str(out), "--num_threads", "1"]) == 0
    return out


def test_quick_test_fixes_on_a_checkpoint_writes_json(tiny_run, tmp_path, capsys):
    path = tmp_path / "report.json"
    code = quick_test_fixes.main(["--experiment", "diag", "--output_dir", str(tiny_run), "--timesteps",
                                  "0,25,49", "--num_clips", "4", "--json", str(path)])
    report = json.loads(path.read_text())
    assert {"mode", "checkpoint", "step", "use_ema", "models", "passed", "thresholds", "wall_s"} <= set(report)
    (model,) = report["models"].values()
    assert [r["t"] for r in model["rows"]] == [0, 25, 49]
    assert {"t", "snr", "eps_mse", "x0_mse", "zero_baseline", "identity_baseline", "skill"} <= set(model["rows"][0])
    assert code == (0 if report["passed"] else 1) and report["passed"] == model["passed"] is False
    assert "Low/high ratio" in capsys.readouterr().out


def test_quick_test_fixes_self_check_plumbing(tmp_path, capsys):
    path = tmp_path / "self.json"
    code = quick_test_fixes.main(["--steps", "2", "--timesteps", "0,49", "--num_clips", "4", "--json", str(path)])
    report = json.loads(path.read_text())
    assert report["mode"] == "self_check" and code in (0, 1)
    assert set(report["models"]) == {"historical (residual_input)", "fixed"}
    assert report["models"]["historical (residual_input)"]["signature"]  # 2 steps: still the identity
    assert "Self-check" in capsys.readouterr().out


def test_quick_test_fixes_self_check_passes_as_shipped(tmp_path):
    """What the README promises: with no arguments the fixed model passes at every t and the historical
    one shows its signature (a recipe change that breaks the self-check's config fails here; ~20 s)."""
    path = tmp_path / "self.json"
    code = quick_test_fixes.main(["--json", str(path)])
    models = json.loads(path.read_text())["models"]
    assert models["fixed"]["passed"] and models["historical (residual_input)"]["signature"]
    assert code == 0


def test_quick_test_fixes_untrained_self_check_is_the_identity_and_fails(tmp_path):
    path = tmp_path / "untrained.json"
    code = quick_test_fixes.main(["--steps", "0", "--timesteps", "0,49", "--num_clips", "4", "--json", str(path)])
    models = json.loads(path.read_text())["models"]
    hist, fixed = models["historical (residual_input)"], models["fixed"]
    for row in hist["rows"]:  # zero-init head: out = x_t exactly, the seed's bug in pure form
        assert row["eps_mse"] == pytest.approx(row["identity_baseline"], rel=1e-5)
    assert hist["rows"][0]["eps_mse"] > hist["rows"][0]["zero_baseline"] and hist["signature"]
    for row in fixed["rows"]:  # outputs zero: skill exactly 0, not a pass
        assert row["skill"] == pytest.approx(0.0, abs=1e-6)
    assert not fixed["passed"] and code == 1
    with pytest.raises(SystemExit) as exc:
        quick_test_fixes.main(["--steps", "-1"])
    assert exc.value.code == 2


def test_debug_sampling_writes_videos_pngs_and_stats(tiny_run, tmp_path, capsys):
    out, stats = tmp_path / "dbg", tmp_path / "stats.json"
    code = debug_vivit_sampling.main(["--experiment", "diag", "--output_dir", str(tiny_run), "--out", str(out),
                                      "--steps", "3", "--num_samples", "2", "--json", str(stats)])
    assert code == 0
    report = json.loads(stats.read_text())
    assert len(report["prompts"]) == 4 and len(report["per_step"]) == 3
    assert {"t", "xt_mean", "xt_std", "xt_min", "xt_max", "x0_std", "x0_clipped", "eps_rms",
            "nonfinite"} <= set(report["per_step"][0])
    assert {"hf_energy", "data_hf_energy", "hf_ratio", "saturation"} <= set(report["final"])
    assert len(list(out.glob("prompt_*.gif"))) == 4 and len(list(out.glob("prompt_*.mp4"))) == 4
    assert (out / "grid.png").is_file() and len(list(out.glob("x0_strip_*.png"))) == 4
    assert "x_t std" in capsys.readouterr().out


def test_text_gain_is_one_for_a_text_blind_model_and_not_for_a_conditioned_one():
    diffusion = GaussianDiffusion(Schedule.create("cosine", 50), "x0")
    videos = torch.rand(4, 3, 2, 4, 4) * 2 - 1
    tokens = torch.arange(4)[:, None] + 2  # clip i has caption token i + 2
    mask = torch.ones(4, 1, dtype=torch.bool)

    class Blind(torch.nn.Module):  # predicts x0 = 0.5 x_t whatever the text
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, x, t, tok, m, drop=None):
            return self.w * x

    class Reads(Blind):  # the caption token selects the clip's own video: perfect only with its own text
        def forward(self, x, t, tok, m, drop=None):
            return videos[tok[:, 0] - 2]

    ts = [0, 25, 49]
    for model, expect_one in ((Blind(), True), (Reads(), False)):
        rows = timestep_table(model, diffusion, videos, tokens, mask, ts, seed=3)
        other = timestep_table(model, diffusion, videos, tokens.roll(1, 0), mask, ts, seed=3)
        if expect_one:
            assert [r["text_gain"] for r in add_text_gain(rows, other)] == [1.0, 1.0, 1.0]
        else:  # own caption: x0-MSE 0, so the gain is unbounded
            assert all(r["text_gain"] > 1e3 for r in add_text_gain(rows, other))
    with pytest.raises(ValueError, match="same timesteps"):
        add_text_gain(rows, other[::-1])


def test_pose_gain_passes_each_clips_keypoints_and_attributes_the_failure():
    diffusion = GaussianDiffusion(Schedule.create("cosine", 50), "x0")
    videos = torch.rand(5, 3, 2, 4, 4) * 2 - 1
    tokens, mask = torch.full((5, 1), 2), torch.ones(5, 1, dtype=torch.bool)
    pose_xy = torch.arange(5.0)[:, None, None, None].expand(5, 2, 20, 2)  # clip i's keypoints encode i
    visible = torch.ones(5, 2, 20, dtype=torch.bool)

    class UsesPose(torch.nn.Module):  # exact x0 given the true keypoints; its own guess (0) otherwise
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, x, t, tok, m, drop=None, pose_xy=None, pose_visible=None):
            return torch.zeros_like(x) if pose_xy is None else self.w * videos[pose_xy[:, 0, 0, 0].long()]

    ts = [0, 25, 49]
    rows = timestep_table(UsesPose(), diffusion, videos, tokens, mask, ts, seed=1, batch_size=2)
    true = timestep_table(UsesPose(), diffusion, videos, tokens, mask, ts, seed=1, batch_size=2,
                          pose=(pose_xy, visible))
    assert all(r["x0_mse"] == 0.0 for r in true)  # every batch slice got its own clips' positions
    lines = add_pose_gain(rows, true)
    assert [r["x0_mse_true_pose"] for r in rows] == [0.0, 0.0, 0.0]
    assert rows[0]["skill"] < 0 and rows[0]["skill_true_pose"] == pytest.approx(1.0)
    assert len(lines) == 1 and "passes at t = 0" in lines[0] and "pose stage" in lines[0]
    assert "still fails" in add_pose_gain(rows, rows)[0]  # the same error with the truth: the denoiser's


def test_quick_test_fixes_attributes_a_pose_model(tmp_path, capsys):
    out = tmp_path / "runs"
    assert train_main.main(["--preset", "tiny", "--max_steps", "2", "--experiment_name", "pose",
                            "--output_dir", str(out), "--num_threads", "1"]) == 0
    path = tmp_path / "pose.json"
    quick_test_fixes.main(["--experiment", "pose", "--output_dir", str(out), "--timesteps", "0,49",
                           "--num_clips", "4", "--json", str(path)])
    (model,) = json.loads(path.read_text())["models"].values()
    assert all({"x0_mse_true_pose", "skill_true_pose"} <= set(r) for r in model["rows"])
    assert not model["passed"]  # 2 steps: fails somewhere, and every failing t is attributed
    assert model["pose_attribution"] and all("true keypoints" in line for line in model["pose_attribution"])
    assert "Pose stage: x0-MSE" in capsys.readouterr().out
