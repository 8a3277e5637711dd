"""A golden loss trace: the first steps of `tiny` (the shipped recipe at toy size) from seed 0.

Any change to the data, the tokenizer, the model's init, the diffusion draws, the objective or the
optimizer moves these numbers. A change that is meant to move them updates GOLDEN_LOSSES in the same
commit, with the reason in its message (and a docs/experiments.md row when the recipe changed)."""
import pytest
import torch

from config import make_config
from data import build_dataset, make_train_loader
from data.text import build_tokenizer
from diffusion import build_diffusion, build_objective
from models import build_model
from training import Trainer, choose_precision

GOLDEN_LOSSES = [3.3514509201049805, 5.4894700050354, 4.2021565437316895, 4.761178016662598]


def tiny_trace(steps: int) -> list[float]:
    cfg = make_config("tiny")
    torch.manual_seed(cfg.seed)
    device = torch.device("cpu")
    train_set = build_dataset(cfg, "train")
    tokenizer = build_tokenizer(cfg, train_set.captions)
    model = build_model(cfg, len(tokenizer))
    diffusion = build_diffusion(cfg, device)
    trainer = Trainer(cfg, model, build_objective(cfg, diffusion), device, choose_precision(cfg, device),
                      streams=cfg.cpu_streams)
    batches = iter(make_train_loader(cfg, train_set, tokenizer, 0, 0, 1))
    try:
        return [float(trainer.step(batches, step).loss) for step in range(steps)]
    finally:
        trainer.close()


def test_tiny_loss_trace_matches_the_golden_one():
    trace = tiny_trace(len(GOLDEN_LOSSES))
    # fp32 on any CPU: kernels differ in summation order between machines (AVX2 vs AVX-512), ~1e-6.
    assert trace == pytest.approx(GOLDEN_LOSSES, rel=1e-4), trace
