"""Every registry entry keeps the contract of its kind; a new entry is covered without a new test.

Methods x compatible losses (:mod:`dmlsynth.contract`, the checks of ``dmlsynth check-method``): one
training step gives a finite loss and gradients, the same seed gives the same numbers, a run resumed from a
checkpoint gives the same numbers, and the method's ``off_params`` make it exactly its control. Datasets, backbones,
losses, generators and image sets: what they name exists and fits together.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from dmlsynth.config import filled
from dmlsynth import contract, layout, registry
from dmlsynth.config import _schema
from dmlsynth.generation.blend import OPERATORS
from dmlsynth.losses import build_loss

CLASSES, DIM = contract.CLASSES, contract.DIM
PAIRS = [(m, l) for m, l in itertools.product(registry.METHODS, registry.LOSSES) if registry.METHODS[m].is_compatible(l)]
# Every variant of every method with each loss it works with (a variant with variant_loss_params: the losses it lists).
VARIANTS = [
    (m, v, l)
    for m, l in PAIRS
    for v in registry.METHODS[m].variants
    if not registry.METHODS[m].variant_loss_params.get(v) or l in registry.METHODS[m].variant_loss_params[v]
]


# The checks `dmlsynth check-method` runs on a plugin (dmlsynth.contract): the project holds its own
# methods to the same code.
@pytest.mark.parametrize("method,loss", PAIRS, ids=[f"{m}-{l}" for m, l in PAIRS])
def test_every_method_trains_a_step_with_every_compatible_loss(method, loss):
    assert contract.step_problem(method, loss) is None
    assert contract.seed_problem(method, loss) is None  # deterministic


@pytest.mark.parametrize("method,loss", PAIRS, ids=[f"{m}-{l}" for m, l in PAIRS])
def test_switched_off_every_method_is_exactly_its_control(method, loss):
    """The control is baseline with the loss params the method's runs use (registry.control_label)."""
    off = registry.METHODS[method].off_params
    assert method == "baseline" or off, f"{method} declares no off_params"
    if method != "baseline":
        assert contract.off_problem(method, loss) is None


@pytest.mark.parametrize("method,loss", PAIRS, ids=[f"{m}-{l}" for m, l in PAIRS])
def test_every_method_resumes_from_a_checkpoint_to_the_same_numbers(method, loss):
    assert contract.resume_problem(method, loss) is None


@pytest.mark.parametrize("method,variant,loss", VARIANTS, ids=[f"{m}-{v}-{l}" for m, v, l in VARIANTS])
def test_every_variant_trains_a_step_and_switched_off_is_exactly_its_control(method, variant, loss):
    """Each variant's control: baseline with the loss params that variant's runs use (e.g. sgar official's head)."""
    value, grads = contract.one_step(method, loss, {"variant": variant})
    assert torch.isfinite(torch.tensor(value)) and all(torch.isfinite(g).all() for g in grads)
    off, off_grads = contract.one_step(method, loss, {"variant": variant, **registry.METHODS[method].off_params})
    config = filled({"method_params": {method: {"variant": variant}}})
    reference, reference_grads = contract.one_step("baseline", loss, {}, loss_params=registry.loss_params(loss, config, method))
    assert off == reference and all(torch.equal(a, b) for a, b in zip(off_grads, reference_grads))


@pytest.mark.parametrize("name", list(registry.METHODS))
def test_method_params_fit_their_schema(name):
    import jsonschema

    assert contract.entry_problems("methods", name) is None
    spec = registry.METHODS[name]
    schema = _schema()["properties"]["method_params"]["properties"][name]
    jsonschema.validate(dict(spec.defaults), schema)
    jsonschema.validate({**spec.defaults, **spec.off_params}, schema)
    for variant in spec.variants:  # every variant's resolved params are valid, and name every key they set
        resolved = spec.resolve({"variant": variant})
        jsonschema.validate(resolved, schema)
        assert set(resolved) <= set(schema["properties"]) and resolved["variant"] == variant
    assert spec.synthetic_images is None or spec.synthetic_images in registry.IMAGE_SETS
    assert spec.compatible_losses is None or spec.compatible_losses <= set(registry.LOSSES)


@pytest.mark.parametrize("name", list(registry.LOSSES))
def test_loss_defaults_fit_their_schema(name):
    import jsonschema

    schema = _schema()["properties"]["loss_params"]["properties"][name]
    jsonschema.validate(dict(registry.LOSSES[name].defaults), schema)
    loss = build_loss(name, registry.LOSSES[name].defaults, CLASSES, DIM)
    assert loss.pair_based == registry.LOSSES[name].pair_based


@pytest.mark.parametrize("name", list(registry.DATASETS))
def test_dataset_entries_name_what_exists(name):
    spec = registry.DATASETS[name]
    assert callable(registry.load_object(spec.prepare)) and callable(registry.load_object(spec.prompts))
    assert spec.default_backbone in registry.BACKBONES and spec.default_generator in registry.GENERATORS
    assert layout.MANIFEST in spec.outputs and 0 < spec.train_classes < spec.num_classes
    assert spec.image_mode in ("L", "RGB")


@pytest.mark.parametrize("name", list(registry.BACKBONES))
def test_every_backbone_is_trunk_then_embedding(name):
    from dmlsynth.models import build_backbone

    channels = 1 if name == "small_cnn" else 3
    model = build_backbone(name, embedding_dim=DIM, pretrained=False, in_channels=channels).eval()
    images = torch.randn(2, channels, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), model.embedding(model.trunk(images)))
        assert model(images).shape == (2, DIM)


@pytest.mark.parametrize("name", list(registry.GENERATORS))
def test_generator_entries_load_through_one_signature(name):
    import inspect

    load = registry.load_object(registry.GENERATORS[name].load)
    assert list(inspect.signature(load).parameters)[:2] == ["settings", "generator_dir"]


@pytest.mark.parametrize("name", list(registry.IMAGE_SETS))
def test_image_sets_use_known_operators(name):
    spec = registry.IMAGE_SETS[name]
    assert spec.conditions in ("attributes", "plain")
    assert spec.operators is None or set(spec.operators) <= set(OPERATORS)
