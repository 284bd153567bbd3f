"""Shared fixtures: a tiny random-init CLIP (fast, offline) and paths to optional real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import ci_toolkit as ci

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR = SHARED / "data" / "cifar10-test"

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 1, "width": 32, "patch_size": 8, "image_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "width": 32, "heads": 2, "layers": 2},
    "preprocess": {"image_size": 32},
}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a larger model or a longer run (still CPU-only)")
    # under xdist each worker gets a core's share of torch threads, so two workers do not oversubscribe the CPU
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config, items):
    """Under xdist, every test on a Ray cluster runs on one worker: the module-scoped `ray_cluster` is then
    started once per module, and two clusters never compete for the machine's two cores."""
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session")
def tiny_config():
    return TINY_CONFIG


@pytest.fixture(scope="session")
def tiny_backbone():
    return ci.create_backbone("custom", config=TINY_CONFIG, seed=0)


@pytest.fixture
def tiny_model(tiny_backbone):
    model = ci.CoCoOp(tiny_backbone, ["red circle", "blue square", "green striped triangle", "cat"], seed=1)
    # a non-trivial meta-net so that pi(x) matters in every comparison
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.prompt_learner.meta_net.parameters():
            p.normal_(0, 0.5)
    return model


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 32, 32, generator=g)


@pytest.fixture
def make_responsive():
    """The tiny fixture's 2 hidden units sit far below 0 on every image (its features barely vary), so its
    meta tokens are a constant and every meta gain is exactly 0. Steep units centred on these images'
    mean feature open on about half of them: pi(x) then follows the image."""

    def make(model, images):
        with torch.no_grad():
            lin1 = model.prompt_learner.meta_net.linear1
            lin1.weight.mul_(100)
            lin1.bias.copy_(-(lin1.weight @ model.encode_image(images).mean(0)))
        return model

    return make


@pytest.fixture(scope="session")
def notebook_work(tmp_path_factory):
    """One scan cache for every notebook run of the session: a master notebook and its student version
    (both in tests/test_notebooks.py) scan the same course models with the same settings, so the second run reloads."""
    return tmp_path_factory.mktemp("notebook_work")


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray cluster on this machine (2 CPUs) for one test module (so its processes do not idle beside
    the other modules' tests); skipped without Ray."""
    ray = pytest.importorskip("ray")
    from lab.executors import init_ray

    started = init_ray(None, num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
