"""training.batch_sampling: random and training.grad_clip_value (SGAR's official recipe), through build_run and train_step."""

from __future__ import annotations

import collections

import pytest
import torch

from dmlsynth import config as cfg
from dmlsynth.training.build import build_run
from dmlsynth.training.loop import train_step
from dmlsynth.config import config_defaults


def params_for(config, seed=0, **training):
    config = dict(config, methods=["baseline"], losses=["proxy_anchor"])
    config["training"] = {**config["training"], **training}
    return cfg.run_params(cfg.validate(config), "digits", "baseline", "proxy_anchor", seed)


def epoch_indices(run) -> list[int]:
    return [int(i) for i in run.train_sampler]


def test_the_defaults_keep_m_per_class_batches_and_no_clipping():
    assert config_defaults()["training"]["batch_sampling"] == "m_per_class"
    assert config_defaults()["training"]["grad_clip_value"] is None


def test_random_batches_are_a_seeded_shuffle_without_repeats_and_not_m_per_class(config, digits_manifest):
    config["training"].update(batch_size=30, m_per_class=6, batches_per_epoch=None)
    run = build_run(params_for(config, batch_sampling="random"), digits_manifest)
    order = epoch_indices(run)
    size = len(run.train_set)
    assert len(order) == (size // 30) * 30 and len(set(order)) == len(order)  # one pass: no image twice
    assert order == epoch_indices(build_run(params_for(config, batch_sampling="random"), digits_manifest))
    assert order != epoch_indices(build_run(params_for(config, seed=1, batch_sampling="random"), digits_manifest))
    targets = run.train_set.targets if hasattr(run.train_set, "targets") else None
    labels = [int(run.train_set[i][1]) for i in order[:30]] if targets is None else [int(targets[i]) for i in order[:30]]
    counts = collections.Counter(labels)
    assert set(counts.values()) != {6}  # not 5 classes x 6 images


def test_random_batches_lift_the_m_per_class_rules(config):
    config["training"].update(batch_size=25, m_per_class=4)  # not a multiple: refused for m_per_class batches
    with pytest.raises(cfg.ConfigError, match="not a multiple of training.m_per_class"):
        params_for(config)
    params_for(config, batch_sampling="random")


def test_random_batches_run_over_more_than_one_pass(config, digits_manifest):
    config["training"].update(batch_size=40, m_per_class=4)
    run = build_run(params_for(config, batch_sampling="random", batches_per_epoch=30), digits_manifest)
    order = epoch_indices(run)
    size = len(run.train_set)
    assert len(order) == 1200 and size < 1200
    assert sorted(order[:size]) == list(range(size))  # the first pass is a permutation


@pytest.mark.parametrize("clip", [None, 1e-4])
def test_grad_clip_value_bounds_every_gradient_entry(config, digits_manifest, clip):
    run = build_run(params_for(config, grad_clip_value=clip), digits_manifest)
    images, labels = next(iter(run.train_loader))
    train_step(run, images, labels, 0)
    grads = torch.cat([p.grad.flatten() for group in run.optimizer.param_groups for p in group["params"] if p.grad is not None])
    largest = float(grads.abs().max())
    if clip is None:
        assert largest > 1e-3
    else:
        assert largest == pytest.approx(clip)
        proxies = run.base_loss.loss.proxies.grad  # the loss's own parameters are clipped too (train.py:349-351)
        assert float(proxies.abs().max()) <= clip
