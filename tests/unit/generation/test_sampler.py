"""The BLenDeR denoising loop on tiny random diffusers components."""

import pytest
import torch

from dmlsynth.generation.blend import combine
from dmlsynth.generation import sampler
from dmlsynth.generation.sampler import blend_embeddings, encode_prompts, make_scheduler
from dmlsynth.registry import GUIDANCE_NORMS, INTERSECTION_RULES

from tests.helpers.generation import tiny_pixel_components

# The sampler takes every setting from its caller (no defaults); these tests' own, unless a test sets one.
SETTINGS = dict(guidance_scale=7.5, steps=25, scheduler="ddim", intersection_rule="principal_component", guidance_norm="none")


def sample(*args, **settings):
    return sampler.sample(*args, **{**SETTINGS, **settings})


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return tiny_pixel_components(tmp_path_factory.mktemp("tok"))


def conditions(components, k, b):
    prompts = ["a digit zero, thin strokes", "a digit zero, slanted left", "a digit zero, large", "a digit zero"]
    embedded = encode_prompts(components, prompts[:k])  # (K, L, D)
    return embedded.unsqueeze(1).expand(k, b, *embedded.shape[1:]).clone(), encode_prompts(components, [""])[0]


def noise(b, seed=0):
    return torch.randn(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_one_unet_call_per_step_on_stacked_batch(components, monkeypatch):
    k, b, steps = 3, 2, 4
    cond, uncond = conditions(components, k, b)
    calls = []
    forward = components.unet.forward

    def counting(sample_, t, encoder_hidden_states, **kw):
        calls.append((sample_.shape[0], encoder_hidden_states.clone()))
        return forward(sample_, t, encoder_hidden_states=encoder_hidden_states, **kw)

    monkeypatch.setattr(components.unet, "forward", counting)
    sample(components, cond, uncond, ["union", "intersection"], noise(b), guidance_scale=7.5, steps=steps, scheduler="ddim",
           intersection_rule="principal_component", guidance_norm="none")
    assert len(calls) == steps
    assert all(size == (k + 1) * b for size, _ in calls)
    hidden = calls[0][1]
    torch.testing.assert_close(hidden[:b], uncond.expand(b, -1, -1))  # [unconditional; c_1 .. c_K] x B
    torch.testing.assert_close(hidden[b:].view(k, b, *hidden.shape[1:]), cond)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver"])
def test_same_noise_same_images(components, scheduler):
    cond, uncond = conditions(components, 2, 3)
    run = lambda seed: sample(components, cond, uncond, ["union"] * 3, noise(3, seed), steps=3, scheduler=scheduler)
    first, again, other = run(0), run(0), run(1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert first.shape == (3, 1, 8, 8) and first.min() >= -1 and first.max() <= 1


def test_k_one_is_ordinary_classifier_free_guidance(components):
    cond, uncond = conditions(components, 1, 2)
    w, steps = 4.0, 3
    images = {op: sample(components, cond, uncond, [op] * 2, noise(2), guidance_scale=w, steps=steps)
              for op in ("union", "intersection", "conjunction")}
    assert torch.equal(images["union"], images["intersection"]) and torch.equal(images["union"], images["conjunction"])
    # Reference: textbook classifier-free guidance with separate UNet calls.
    scheduler = make_scheduler(components, "ddim")
    scheduler.set_timesteps(steps)
    latents = noise(2) * scheduler.init_noise_sigma
    with torch.no_grad():
        for t in scheduler.timesteps:
            e_u = components.unet(latents, t, encoder_hidden_states=uncond.expand(2, -1, -1)).sample
            e_c = components.unet(latents, t, encoder_hidden_states=cond[0]).sample
            latents = scheduler.step(e_u + w * (e_c - e_u), t, latents).prev_sample
    torch.testing.assert_close(images["union"], latents.clamp(-1, 1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", INTERSECTION_RULES)
def test_strength_control_applies_the_mean_residuals_norm_at_every_step(components, monkeypatch, rule):
    """Through the loop: the guidance handed to the scheduler is ``eps_∅ + w·g`` with ``‖g‖ = ‖mean residual‖``
    per image at every step, in the direction of that image's operator."""
    from dmlsynth.generation import sampler as sampler_module

    k, b, w, steps = 3, 4, 5.0, 4
    cond, uncond = conditions(components, k, b)
    cond = cond + 0.3 * torch.randn(cond.shape, generator=torch.Generator().manual_seed(2))  # four different images
    ops = ["union", "intersection", "inclusion_exclusion", "conjunction"]
    predictions, guided = [], []
    forward = components.unet.forward

    def recording_unet(sample_, t, encoder_hidden_states, **kw):
        out = forward(sample_, t, encoder_hidden_states=encoder_hidden_states, **kw)
        predictions.append(out.sample.detach().clone())
        return out

    make = sampler_module.make_scheduler

    def recording_scheduler(components_, name):
        schedule = make(components_, name)
        step = schedule.step
        schedule.step = lambda model_output, t, latents, **kw: (guided.append(model_output.clone()), step(model_output, t, latents, **kw))[1]
        return schedule

    monkeypatch.setattr(components.unet, "forward", recording_unet)
    monkeypatch.setattr(sampler_module, "make_scheduler", recording_scheduler)
    seen = []
    sample(components, cond, uncond, ops, noise(b), guidance_scale=w, steps=steps, scheduler="ddim",
           intersection_rule=rule, guidance_norm="mean", on_step=lambda step, d: seen.append(step))  # fmt: skip
    assert len(predictions) == len(guided) == steps and seen == list(range(steps))
    for eps, model_output in zip(predictions, guided):
        eps = eps.float().view(k + 1, b, *eps.shape[1:])
        d = eps[1:] - eps[0:1]
        applied = ((model_output - eps[0]) / w).flatten(1)
        torch.testing.assert_close(applied.norm(dim=1), d.mean(0).flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)
        raw = combine(d, ops, rule, "none").flatten(1)
        cosine = (applied * raw).sum(1) / (applied.norm(dim=1) * raw.norm(dim=1))
        torch.testing.assert_close(cosine, torch.ones(b), rtol=0, atol=1e-4)
        # There was something to rescale: the conjunction is K times the mean residual.
        assert raw[3].norm() == pytest.approx(k * float(d.mean(0)[3].norm()), rel=1e-4)


def test_k_one_is_unchanged_by_the_rule_and_the_strength_control(components):
    cond, uncond = conditions(components, 1, 2)
    reference = sample(components, cond, uncond, ["union", "intersection"], noise(2), guidance_scale=4.0, steps=3)
    for rule in INTERSECTION_RULES:
        for norm in GUIDANCE_NORMS:
            images = sample(components, cond, uncond, ["union", "intersection"], noise(2), guidance_scale=4.0, steps=3,
                            intersection_rule=rule, guidance_norm=norm)  # fmt: skip
            assert torch.equal(images, reference), (rule, norm)


def test_the_strength_control_and_the_rule_change_the_images(components):
    cond, uncond = conditions(components, 3, 1)
    run = lambda op, rule, norm: sample(components, cond, uncond, [op], noise(1), steps=3, guidance_scale=5.0,
                                        intersection_rule=rule, guidance_norm=norm)  # fmt: skip
    assert not torch.allclose(run("union", "principal_component", "mean"), run("union", "principal_component", "none"))
    assert not torch.allclose(run("intersection", "principal_component", "none"), run("intersection", "elementwise", "none"))


def test_operator_changes_the_image(components):
    cond, uncond = conditions(components, 3, 1)
    union = sample(components, cond, uncond, ["union"], noise(1), steps=3, guidance_scale=5.0)
    inter = sample(components, cond, uncond, ["intersection"], noise(1), steps=3, guidance_scale=5.0)
    assert not torch.allclose(union, inter)


def test_blend_embeddings_is_convex_combination(components):
    embedded = encode_prompts(components, ["a digit zero", "a digit zero, large", "a digit zero, upright"])
    one_hot = torch.tensor([0.0, 1.0, 0.0])
    torch.testing.assert_close(blend_embeddings(embedded, one_hot), embedded[1])
    weights = torch.tensor([[0.2, 0.3, 0.5]])
    torch.testing.assert_close(blend_embeddings(embedded, weights)[0], 0.2 * embedded[0] + 0.3 * embedded[1] + 0.5 * embedded[2])
    with pytest.raises(ValueError, match="sum to 1"):
        blend_embeddings(embedded, torch.tensor([0.5, 0.6, 0.0]))


def test_unknown_scheduler_is_explained(components):
    with pytest.raises(ValueError, match="known: ddim, dpm-solver"):
        make_scheduler(components, "euler")


def on(device, folder):
    """Fresh tiny components with their modules on ``device``."""
    fresh = tiny_pixel_components(folder)
    fresh.unet.to(device)
    fresh.text_encoder.to(device)
    return fresh


def test_blend_weights_follow_the_embeddings_device(device, tmp_path):
    """Weights are built on the CPU; the prompt embeddings live where the text encoder runs (issue #9's crash)."""
    components = on(device, tmp_path)
    embedded = encode_prompts(components, ["a digit zero", "a digit zero, large"])
    assert embedded.device.type == device
    blended = blend_embeddings(embedded, torch.tensor([[0.25, 0.75]]))
    assert blended.device.type == device
    torch.testing.assert_close(blended[0], 0.25 * embedded[0] + 0.75 * embedded[1])


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver"])
def test_sampling_on_the_device_matches_the_cpu(device, components, tmp_path, scheduler):
    """Every tensor of the loop is on the components' device; the images agree with the CPU's."""
    moved = on(device, tmp_path)
    k, b = 3, 4
    cond, uncond = conditions(moved, k, b)
    ops = ["union", "intersection", "conjunction", "inclusion_exclusion"]
    # The workflow's defaults: the principal-component intersection and the strength control.
    options = dict(guidance_scale=3.0, steps=3, scheduler=scheduler, intersection_rule="principal_component", guidance_norm="mean")
    images = sample(moved, cond, uncond, ops, noise(b), **options)
    again = sample(moved, cond, uncond, ops, noise(b), **options)
    assert images.device.type == device and torch.equal(images, again)
    cpu_cond, cpu_uncond = conditions(components, k, b)
    reference = sample(components, cpu_cond, cpu_uncond, ops, noise(b), **options)
    # CUDA convolutions may use TF32 (10-bit mantissa): agreement to ~1e-3 of the [-1, 1] range.
    torch.testing.assert_close(images.cpu(), reference, atol=1e-2, rtol=0)


def test_images_do_not_depend_on_the_batch(components):
    """The same images in one call of 6 or in calls of 1, 2, 4 (to float rounding; measured bit for bit here)."""
    k, n = 3, 6
    cond, uncond = conditions(components, k, n)
    cond = cond + 0.1 * torch.randn(cond.shape, generator=torch.Generator().manual_seed(3))  # six different images
    ops = ["union", "intersection"] * 3
    whole = sample(components, cond, uncond, ops, noise(n), guidance_scale=3.0, steps=4, scheduler="dpm-solver")
    assert not torch.allclose(whole[0], whole[1])
    for size in (1, 2, 4):
        parts = [
            sample(components, cond[:, s : s + size], uncond, ops[s : s + size], noise(n)[s : s + size],
                   guidance_scale=3.0, steps=4, scheduler="dpm-solver")
            for s in range(0, n, size)
        ]  # fmt: skip
        # Kernels may block float sums differently at other batch sizes (the tiny latent model with its
        # VAE differs by ~1e-6); this pixel model on the CPU with 1 thread was measured identical.
        torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=0)
