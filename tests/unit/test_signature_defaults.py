"""No signature default that differs from the configured one.

A function the workflow calls with a resolved setting either takes it without a default (the caller must pass
it) or defaults to exactly the value the config resolves to: a benchmark or test that calls it bare samples,
trains or reports as the workflow does. The defaults come from :func:`dmlsynth.config.config_defaults` (the
schema and the registry entries, filled in one pass), never from a copy.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from dmlsynth import losses, stats, table
from dmlsynth.config import config_defaults
from dmlsynth.generation import blend, sampler

DEFAULTS = config_defaults(["digits"])
GENERATION = DEFAULTS["generation"]["digits"]
LOSS = DEFAULTS["loss_params"]
STATISTICS = DEFAULTS["statistics"]
BLEND = ("intersection_rule", "guidance_norm")

# Each entry point and, per parameter that stands for a configured setting, the setting's resolved default.
ENTRY_POINTS = {
    "sampler.sample": (sampler.sample, {k: GENERATION[k] for k in ("guidance_scale", "steps", "scheduler", *BLEND)}),
    "blend.combine": (blend.combine, {k: GENERATION[k] for k in BLEND}),
    "blend.guidance_statistics": (blend.guidance_statistics, {k: GENERATION[k] for k in BLEND}),
    "losses.PotentialFieldLoss": (losses.PotentialFieldLoss, {k: LOSS["potential_field"][k] for k in ("proxies_per_class", "alpha", "delta")}),
    # The unit form serves n_pairs and angular: alpha is angular's (n_pairs has none), the rest each loss's own.
    "losses.PairUnitSoftmaxLoss": (losses.PairUnitSoftmaxLoss, {"alpha": LOSS["angular"]["alpha"], "normalize": None, "l2_reg": None}),
    "stats.t_interval": (stats.t_interval, {"confidence": STATISTICS["confidence"]}),
    "stats.percentile_interval": (stats.percentile_interval, {"confidence": STATISTICS["confidence"]}),
    "table.summary_markdown": (table.summary_markdown, {"confidence": STATISTICS["confidence"], "alpha": STATISTICS["alpha"]}),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_an_entry_point_defaults_to_the_configured_value_or_takes_it(name):
    function, settings = ENTRY_POINTS[name]
    parameters = inspect.signature(function).parameters
    for key, resolved in settings.items():
        assert key in parameters, f"{name} has no parameter {key!r} (renamed? update this test)"
        default = parameters[key].default
        if default is inspect.Parameter.empty:
            continue  # the caller passes the resolved value
        assert resolved is not None, f"{name}({key}=...) must have no default: its value depends on the loss"
        assert default == resolved, f"{name}({key}={default!r}) differs from the configured default {resolved!r}"


def test_the_sampler_and_the_operators_take_every_setting_from_their_caller():
    """The generation settings have no default at all (the issue's 7.5 / 25 / ddim / none against 3.0 / 15 /
    dpm-solver / mean): a call that leaves one out is an error, not another recipe."""
    for function, keys in ((sampler.sample, ("guidance_scale", "steps", "scheduler", *BLEND)), (blend.combine, BLEND)):
        parameters = inspect.signature(function).parameters
        assert all(parameters[key].default is inspect.Parameter.empty for key in keys), function.__name__
    with pytest.raises(TypeError, match="guidance_norm"):
        blend.combine(torch.zeros(2, 1, 3), ["union"], "principal_component")
