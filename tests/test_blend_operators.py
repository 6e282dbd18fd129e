"""Properties of the BLenDeR residual operators (METHODS.md §7)."""

import pytest
import torch

from dmlsynth.generate.blend import combine, conjunction, intersection, principal_direction, union


def residuals(k=4, b=3, shape=(2, 5, 5), seed=0):
    return torch.randn(k, b, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("operator", [intersection, union, conjunction])
def test_k_equal_one_is_plain_guidance(operator):
    d = residuals(k=1)
    torch.testing.assert_close(operator(d), d[0])


@pytest.mark.parametrize("operator", [intersection, union])
def test_all_residuals_equal_returns_that_residual(operator):
    one = residuals(k=1)
    d = one.repeat(5, 1, 1, 1, 1)
    torch.testing.assert_close(operator(d), one[0])


def test_conjunction_of_equal_residuals_is_k_times():
    one = residuals(k=1)
    torch.testing.assert_close(conjunction(one.repeat(3, 1, 1, 1, 1)), 3 * one[0])


def test_intersection_invariant_to_order():
    d = residuals()
    torch.testing.assert_close(intersection(d[torch.tensor([2, 0, 3, 1])]), intersection(d))


@pytest.mark.parametrize("scale", [3.0, 0.25, -2.0])
def test_intersection_scale_equivariant(scale):
    d = residuals()
    torch.testing.assert_close(intersection(scale * d), scale * intersection(d))


def test_union_is_conjunction_minus_k_minus_one_intersections():
    d = residuals(k=5)
    torch.testing.assert_close(union(d), conjunction(d) - 4 * intersection(d))


def test_intersection_is_per_image():
    d = residuals(b=3)
    whole = intersection(d)
    for b in range(3):
        torch.testing.assert_close(whole[b], intersection(d[:, b : b + 1])[0])


def test_intersection_matches_svd_definition():
    d = residuals(k=3, b=2)
    for b in range(2):
        matrix = d[:, b].reshape(3, -1)
        v = torch.linalg.svd(matrix, full_matrices=False).Vh[0]
        if (matrix @ v).sum() < 0:
            v = -v
        expected = (matrix @ v).mean() * v
        torch.testing.assert_close(intersection(d)[b].reshape(-1), expected)
        torch.testing.assert_close(principal_direction(d)[b], v)


def test_intersection_follows_the_shared_part():
    # d_i = s + o_i, o_i orthogonal to s and to each other, equal norms: the top singular
    # direction is the mean residual, so ∩ = mean(d) and ∪ keeps one full copy of s.
    n = 12
    s = torch.zeros(n, dtype=torch.float64)
    s[0] = 10.0
    others = torch.zeros(3, n, dtype=torch.float64)
    for i in range(3):
        others[i, i + 1] = 0.5
    d = (s + others).unsqueeze(1)  # (3, 1, n)
    mean = d.mean(dim=0)[0]
    torch.testing.assert_close(intersection(d)[0], mean)
    torch.testing.assert_close(union(d)[0], s + others.sum(0) / 3)
    assert intersection(d)[0] @ s == pytest.approx(s @ s)


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


def test_half_precision_input_keeps_dtype():
    d = residuals().to(torch.float16)
    assert intersection(d).dtype == torch.float16
    torch.testing.assert_close(intersection(d).double(), intersection(d.double()), atol=2e-2, rtol=2e-2)


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="one per image"):
        combine(residuals(b=2), ["union"])
    with pytest.raises(ValueError, match="unknown operator"):
        combine(residuals(b=1), ["xor"])
    with pytest.raises(ValueError, match=r"\(K, B"):
        intersection(torch.zeros(3))
