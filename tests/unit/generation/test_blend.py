"""Properties of the BLenDeR residual operators (docs/methods.md §7)."""

import itertools

import pytest
import torch

from dmlsynth import registry
from dmlsynth.generation import sampler as sampler_module
from dmlsynth.generation.blend import combine, conjunction, intersection, union


def residuals(k=4, b=3, shape=(2, 5, 5), seed=0):
    return torch.randn(k, b, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def shared_and_attributes(k=3, n=60, seed=0, overlap=False):
    """``s`` on the first third of the elements, attribute ``a_i`` on its own block of the rest.

    The attributes are orthogonal to ``s`` and to each other (disjoint supports), like local image
    attributes. With ``overlap`` each attribute also strengthens part of ``s`` (same sign there).
    """
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(n, dtype=torch.float64)
    s[: n // 3] = torch.randn(n // 3, generator=g, dtype=torch.float64)
    attributes = torch.zeros(k, n, dtype=torch.float64)
    block = (n - n // 3) // k
    for i in range(k):
        start = n // 3 + i * block
        attributes[i, start : start + block] = torch.randn(block, generator=g, dtype=torch.float64)
        if overlap:
            extra = torch.zeros(n, dtype=torch.float64)
            extra[i : n // 3 : k] = 0.5 * s[i : n // 3 : k]
            attributes[i] += extra
    return s, attributes


@pytest.mark.parametrize("operator", [intersection, union, conjunction])
def test_k_equal_one_is_plain_guidance(operator):
    d = residuals(k=1)
    torch.testing.assert_close(operator(d), d[0])
    torch.testing.assert_close(combine(d, ["union", "intersection", "conjunction"]), d[0])


@pytest.mark.parametrize("operator", [intersection, union])
def test_all_residuals_equal_returns_that_residual(operator):
    one = residuals(k=1)
    d = one.repeat(5, 1, 1, 1, 1)
    torch.testing.assert_close(operator(d), one[0])


def test_conjunction_of_equal_residuals_is_k_times():
    one = residuals(k=1)
    torch.testing.assert_close(conjunction(one.repeat(3, 1, 1, 1, 1)), 3 * one[0])


def test_intersection_keeps_the_shared_part_and_drops_the_attributes():
    s, a = shared_and_attributes()
    d = (s + a).unsqueeze(1)  # (K, 1, N)
    torch.testing.assert_close(intersection(d)[0], s)
    # What a rule inside the span of the residuals gives (the previous principal-component
    # surrogate): every attribute at 1/K strength.
    assert torch.norm(d.mean(0)[0] - s) > 0.3 * torch.norm(a.sum(0))


def test_union_keeps_every_attribute_at_full_strength_and_the_shared_part_once():
    s, a = shared_and_attributes(k=4)
    d = (s + a).unsqueeze(1)
    torch.testing.assert_close(union(d)[0], s + a.sum(0))
    for attribute in a:
        assert union(d)[0] @ attribute / (attribute @ attribute) == pytest.approx(1.0)
        assert intersection(d)[0] @ attribute == pytest.approx(0.0)
    assert union(d)[0] @ s / (s @ s) == pytest.approx(1.0)


def test_attributes_that_also_strengthen_the_shared_part_stay_out_of_the_intersection():
    s, a = shared_and_attributes(k=3, overlap=True)
    d = (s + a).unsqueeze(1)
    torch.testing.assert_close(intersection(d)[0], s)
    torch.testing.assert_close(union(d)[0], s + a.sum(0))


def test_operators_are_close_on_slightly_noisy_residuals():
    s, a = shared_and_attributes(k=3, n=3000)
    noise = 0.02 * torch.randn(3, 3000, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d = (s + a + noise).unsqueeze(1)
    assert torch.norm(intersection(d)[0] - s) < 0.1 * torch.norm(s)
    assert torch.norm(union(d)[0] - (s + a.sum(0))) < 0.1 * torch.norm(s + a.sum(0))


def test_an_attribute_shared_by_some_but_not_all_is_dropped_by_the_intersection():
    s, a = shared_and_attributes(k=3)
    d = torch.stack([s + a[0], s + a[0], s]).unsqueeze(1)
    torch.testing.assert_close(intersection(d)[0], s)
    torch.testing.assert_close(union(d)[0], s + 2 * a[0])  # each residual's own part counts once


def test_intersection_matches_its_elementwise_definition():
    d = residuals(k=3, b=2, shape=(7,))
    d[0, 0, 0] = 0.0  # an element where one residual is exactly zero
    expected = torch.zeros(2, 7, dtype=torch.float64)
    for b, n in itertools.product(range(2), range(7)):
        values = d[:, b, n]
        if (values > 0).all() or (values < 0).all():
            expected[b, n] = values[values.abs().argmin()]
    torch.testing.assert_close(intersection(d), expected)


def test_intersection_invariant_to_order():
    d = residuals()
    torch.testing.assert_close(intersection(d[torch.tensor([2, 0, 3, 1])]), intersection(d))
    torch.testing.assert_close(union(d[torch.tensor([2, 0, 3, 1])]), union(d))


@pytest.mark.parametrize("scale", [3.0, 0.25, -2.0])
def test_operators_scale_equivariant(scale):
    d = residuals()
    torch.testing.assert_close(intersection(scale * d), scale * intersection(d))
    torch.testing.assert_close(union(scale * d), scale * union(d))


def test_union_is_conjunction_minus_k_minus_one_intersections():
    d = residuals(k=5)
    torch.testing.assert_close(union(d), conjunction(d) - 4 * intersection(d))


def test_operators_work_per_image():
    d = residuals(b=3)
    for operator in (intersection, union):
        whole = operator(d)
        for b in range(3):
            torch.testing.assert_close(whole[b], operator(d[:, b : b + 1])[0])


def test_zero_residuals_give_zero():
    d = torch.zeros(3, 2, 4)
    assert torch.equal(intersection(d), torch.zeros(2, 4))
    assert torch.equal(union(d), torch.zeros(2, 4))


def test_combine_picks_operator_per_image():
    d = residuals(k=3, b=3)
    out = combine(d, ["union", "intersection", "conjunction"])
    torch.testing.assert_close(out[0], union(d)[0])
    torch.testing.assert_close(out[1], intersection(d)[1])
    torch.testing.assert_close(out[2], conjunction(d)[2])
    for name, operator in [("union", union), ("intersection", intersection), ("conjunction", conjunction)]:
        torch.testing.assert_close(combine(d, [name] * 3), operator(d))


def test_half_precision_input_keeps_dtype():
    d = residuals().to(torch.float16)
    for operator in (intersection, union):
        assert operator(d).dtype == torch.float16
        torch.testing.assert_close(operator(d).double(), operator(d.double()), atol=2e-2, rtol=2e-2)


def test_operators_on_device(device):
    d = residuals().to(device)
    torch.testing.assert_close(combine(d, ["union", "intersection", "union"]).cpu(), combine(d.cpu(), ["union", "intersection", "union"]))


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="one per image"):
        combine(residuals(b=2), ["union"])
    with pytest.raises(ValueError, match="unknown operator"):
        combine(residuals(b=1), ["xor"])
    with pytest.raises(ValueError, match=r"\(K, B"):
        intersection(torch.zeros(3))


# --- on a trained generator ---------------------------------------------------------------------

# A short training (about 15 s on 1 core): its residuals already behave like the full generator's
# (the previous principal-component operators gave union and intersection within 4 % of each other).
SMALL_GENERATOR = {**registry.EMBEDDED_GENERATOR_DEFAULTS, "train_steps": 120, "batch_size": 32, "unet_channels": [16, 32], "text_width": 32, "warmup_steps": 30}


@pytest.fixture(scope="module")
def digits_generator(digits_manifest, tmp_path_factory):
    from dmlsynth.data.manifest import read_manifest
    from dmlsynth.generation.embedded import load_embedded, train_embedded
    from dmlsynth.generation.prompts import build_prompts, read_prompts, write_prompts

    frame = read_manifest(digits_manifest)
    train = frame[frame.split == "train"].reset_index(drop=True)
    folder = tmp_path_factory.mktemp("blend")
    train_embedded(train, folder / "generator", SMALL_GENERATOR, seed=0)
    labels = sorted(int(l) for l in train.label.unique())
    entries = read_prompts(write_prompts(build_prompts("digits", train), folder / "prompts.yaml"), labels)
    return load_embedded(folder / "generator"), entries, labels


def test_union_and_intersection_differ_at_every_step_on_the_digits_generator(digits_generator, monkeypatch):
    """‖∪ − ∩‖ is a large share of the mean residual at every denoising step (was ~1 % early on)."""
    from dmlsynth.generation.run import _conditions, image_seed, initial_noise, plan_image
    from dmlsynth.generation.sampler import encode_prompts, sample
    from dmlsynth.generation.settings import generation_settings, set_recipe

    DEFAULTS = generation_settings({}, "digits")

    components, entries, labels = digits_generator
    recipe = set_recipe("union", DEFAULTS)
    seeds = [image_seed(0, label, "union", i) for label in labels for i in range(2)]
    plans = [plan_image(entries[label], recipe, seed) for label, seed in zip([l for l in labels for _ in range(2)], seeds)]
    recorded = []

    def recording_combine(d, operators):
        recorded.append(d.clone())
        return combine(d, operators)

    monkeypatch.setattr(sampler_module, "combine", recording_combine)
    images = sample(
        components,
        _conditions(components, plans, {}),
        encode_prompts(components, [""])[0],
        ["union"] * len(plans),
        torch.stack([initial_noise(components, s) for s in seeds]),
        guidance_scale=DEFAULTS["guidance_scale"],
        steps=DEFAULTS["steps"],
        scheduler=DEFAULTS["scheduler"],
    )
    assert torch.isfinite(images).all()
    assert len(recorded) == DEFAULTS["steps"]
    for step, d in enumerate(recorded):
        scale = d.mean(0).flatten(1).norm(dim=1)
        gap = (union(d) - intersection(d)).flatten(1).norm(dim=1) / scale
        assert gap.min() > 0.1, f"step {step}: union and intersection differ by only {gap.min():.3f} of the mean residual"
        # The shared part is not the plain average: the intersection is smaller than the mean residual.
        assert (intersection(d).flatten(1).norm(dim=1) < scale).all(), step
