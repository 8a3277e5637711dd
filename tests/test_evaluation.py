"""The evaluation: wrong videos score wrong, prompt ranking on toy models, the runner end to end."""
import json

import pytest
import torch

from config import make_config
from data.signer import sentence_trajectory
from data.synthetic import SyntheticSignDataset
from data.text import Tokenizer
from diffusion import build_diffusion
from diffusion.gaussian import GaussianDiffusion, Schedule
from evaluation.runner import CONDITIONS, canonical_dtw_floor, evaluate_run, prompt_ranking, score_synthetic
from models import build_model


def _refs(n=6, frames=16, size=32):
    ds = SyntheticSignDataset("test", n, frames, size, seed=0)
    return [ds[i] for i in range(n)]


def test_ground_truth_scores_perfect_and_wrong_videos_score_wrong():
    refs = _refs()
    truth = score_synthetic(torch.stack([r["video"] for r in refs]), refs)
    assert truth["gloss_accuracy"] >= 0.99 and truth["gloss_wer"] <= 0.01
    assert truth["noise_level"] == 0 and abs(truth["motion_ratio"] - 1) < 0.05
    other = torch.stack([refs[(i + 1) % len(refs)]["video"] for i in range(len(refs))])  # another prompt
    still = torch.stack([r["video"][:, :1].expand_as(r["video"]) for r in refs])  # a frozen first frame
    noise = torch.rand_like(other) * 2 - 1
    wrong_prompt, frozen, pure_noise = (score_synthetic(v, refs) for v in (other, still, noise))
    assert wrong_prompt["gloss_accuracy"] < 0.5 and wrong_prompt["dtw_hand_error"] > truth["dtw_hand_error"]
    assert frozen["gloss_accuracy"] < 0.5 and frozen["motion_ratio"] < 0.2
    assert pure_noise["gloss_accuracy"] < 0.5 and pure_noise["noise_level"] > 0.1


def test_canonical_dtw_floor_is_zero_on_canonical_tracks_and_grows_with_an_offset():
    refs = _refs()
    canonical = [dict(r, hand_xy=torch.from_numpy(sentence_trajectory(r["glosses"], 16)[0]),
                      hand_visible=torch.ones(16, 2, dtype=torch.bool)) for r in refs]
    assert canonical_dtw_floor(canonical, 16) < 1e-6
    shifted = [dict(r, hand_xy=r["hand_xy"] + torch.tensor([0.03, 0.0])) for r in canonical]
    assert abs(canonical_dtw_floor(shifted, 16) - 0.03) < 1e-4  # every frame off by 0.03 in x
    # Rendered references (a style's body offset/scale and timing jitter): well above zero
    assert 0.01 < canonical_dtw_floor(refs, 16) < 0.1


class _Oracle(torch.nn.Module):
    """Predicts x0 exactly for the caption it knows, and garbage for any other caption."""

    def __init__(self, videos_by_token):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.videos_by_token = videos_by_token

    def forward(self, x, t, tokens, mask, drop_text=None):
        return torch.stack([self.videos_by_token.get(int(tok[0]), torch.zeros_like(x[0])) for tok in tokens])


class _TextBlind(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, tokens, mask, drop_text=None):
        return self.w * x


def test_prompt_ranking_on_toy_models():
    cfg = make_config("tiny", dict(num_frames=16, frame_size_px=32, patch_size_px=8))
    refs = _refs(8)
    # Captions that start with distinct words, so the oracle can key on the first token.
    for i, r in enumerate(refs):
        r["caption"] = f"w{i} " + r["caption"]
    tok = Tokenizer.from_captions([r["caption"] for r in refs])
    diffusion = GaussianDiffusion(Schedule.create("cosine", 50), "x0")
    oracle = _Oracle({tok.encode(r["caption"], 1)[0]: r["video"] for r in refs})
    assert prompt_ranking(oracle, diffusion, tok, refs, cfg) == 1.0
    assert prompt_ranking(_TextBlind(), diffusion, tok, refs, cfg) == 0.0  # ties never count


@pytest.mark.parametrize("pose_cond", [False, True])
def test_evaluate_run_writes_every_condition(tmp_path, pose_cond):
    cfg = make_config("tiny", dict(pose_cond=pose_cond, output_dir=str(tmp_path)))
    ds = SyntheticSignDataset("train", cfg.num_train_samples, cfg.num_frames, cfg.frame_size_px, cfg.seed)
    tok = Tokenizer.from_captions(ds.captions)
    model = build_model(cfg, len(tok))
    path = tmp_path / "eval.json"
    results = evaluate_run(model, build_diffusion(cfg), tok, cfg, "test", path,
                           log=lambda *a: None, num_clips=3)
    saved = json.loads(path.read_text())
    assert set(CONDITIONS) <= set(saved) and "prompt_ranking_top1" in saved
    for cond in CONDITIONS:
        assert {"gloss_accuracy", "gloss_wer", "dtw_hand_error", "noise_level", "motion_ratio", "flicker_ratio",
                "fvd"} <= set(saved[cond])
    assert results["ground_truth"]["noise_level"] == 0 and results["ground_truth"]["flicker_ratio"] == pytest.approx(1, abs=1e-12)
    # An untrained model's clips are far from the data; the ground truth is another draw of it.
    assert results["intended"]["fvd"] > 10 * abs(results["ground_truth"]["fvd"])
    assert saved["meta"]["fvd_reference_clips"] > 0
    # The pose stage's own error is reported for a pose-conditioned model (untrained: the centre).
    assert ("pose_rmse_px" in saved) == pose_cond and saved.get("pose_rmse_px", 1) > 0


def test_evaluate_cli_applies_sampler_options(tmp_path):
    import evaluate
    import main as train_main
    assert train_main.main(["--preset", "tiny", "--experiment_name", "ev", "--output_dir", str(tmp_path),
                            "--max_steps", "2"]) == 0
    out = tmp_path / "eval.json"
    assert evaluate.main(["--experiment", "ev", "--output_dir", str(tmp_path), "--num_clips", "2",
                          "--sampler", "ddpm", "--eta", "1", "--guidance", "2", "--json", str(out)]) == 0
    meta = json.loads(out.read_text())["meta"]
    assert (meta["sampler"], meta["ddim_eta"], meta["guidance_scale"], meta["num_clips"]) == ("ddpm", 1.0, 2.0, 2)
    assert evaluate.main(["--experiment", "ev", "--output_dir", str(tmp_path), "--num_clips", "2",
                          "--start_t", "10", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["meta"]["start_t"] == 10
