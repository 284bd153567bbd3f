"""The trigger-reverse-engineering baselines on a model with a planted trigger: known answers."""

from __future__ import annotations

import pytest
import torch

from ci_toolkit.detect.baselines import BASELINES, CostConfig, run_baseline
from ci_toolkit.detect.rules import decide_evidence, Evidence

SIZE = 16  # image side of the planted model
PLANTED = 3  # its backdoor class


class PlantedModel(torch.nn.Module):
    """Five classes; class k's logit is 40 x the mean brightness of its own pixel region. The backdoor class's
    region is ONE pixel, the others' are 6 x 6 blocks: the smallest trigger that reaches class k is 1 pixel for
    the backdoor and many for the rest."""

    def __init__(self):
        super().__init__()
        self.regions = torch.zeros(5, SIZE, SIZE)
        for k, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (12, 12), (8, 8)]):
            if k == PLANTED:
                self.regions[k, r, c] = 1.0
            else:
                self.regions[k, r : r + 6, c : c + 6] = 1.0 / 36
        self.scale = torch.nn.Parameter(torch.tensor(40.0), requires_grad=False)

    def prompts_for(self, names):
        return names

    def forward(self, x, prompts=None):
        bright = torch.einsum("nchw,khw->nk", x.mean(1, keepdim=True).expand_as(x), self.regions) / x.shape[1]
        return self.scale * bright


@pytest.mark.parametrize("method", ["neural-cleanse", "pixel-backdoor"])
def test_baseline_finds_the_planted_one_pixel_trigger(method):
    g = torch.Generator().manual_seed(0)
    pool, heldout = torch.rand(128, 3, SIZE, SIZE, generator=g) * 0.2, torch.rand(32, 3, SIZE, SIZE, generator=g) * 0.2
    names = [f"c{k}" for k in range(5)]
    algo = BASELINES[method]
    cfg = CostConfig(**{**algo.defaults, "epochs": 30, "group": 5})  # 120 steps, as many as a 1000-image pool's 5 epochs
    res = run_baseline(method, PlantedModel(), pool, heldout, names, cfg=cfg, progress=False)
    sizes = torch.tensor(res.sizes)
    # every target class was reached and the backdoor's trigger is by far the smallest
    assert all(res.reached_bound), (res.asr, res.reached_bound)
    others = [k for k in range(5) if k != PLANTED]
    assert int(sizes.argmin()) == PLANTED and sizes[PLANTED] * 4 < sizes[others].min(), sizes
    d = decide_evidence(Evidence(names=names, asr=res.asr, loss=res.loss, sizes=res.sizes), "mad")
    assert d.verdict == "backdoored" and d.target_name == f"c{PLANTED}"
