"""The table's statistical wiring, through ``dmlsynth table`` and ``dmlsynth compare`` on small run folders:
each test fails on a realistic one-line bug named in its docstring (issue #28)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dmlsynth import stats
from dmlsynth.cli import main
from tests.helpers.runs import make_run, simulated_hits

NO_CONFIG = "no-such-params.yaml"  # the statistics' defaults


def table(tmp_path, *extra):
    out = tmp_path / "results"
    code = main(["table", "--config", str(tmp_path / NO_CONFIG), "--out-dir", str(out), *extra, str(tmp_path / "runs")])
    return code, out


def read(out, name="table.csv"):
    return pd.read_csv(out / name, keep_default_na=False, na_values=["n/a"])


def seeded(tmp_path, dataset, method, loss, seeds, mean, rng, **kwargs):
    for seed in seeds:
        make_run(tmp_path, dataset, method, loss, seed, simulated_hits(rng, mean + 0.02 * rng.standard_normal(), 0.0), **kwargs)


@pytest.mark.parametrize("training", [{"batch_size": 40}, {"batch_size": 80, "lr": 0.01}])
def test_seeds_trained_with_another_training_block_are_not_averaged(tmp_path, capsys, training):
    """Bug: the row check ignores the ``training`` block (``_differences(run, first, ("seed", "training"))``)."""
    rng = np.random.default_rng(0)
    seeded(tmp_path, "digits", "baseline", "ms", [0, 1], 0.6, rng)
    make_run(tmp_path, "digits", "baseline", "ms", 2, simulated_hits(rng, 0.6, 0.0), params={"training": training})
    code, out = table(tmp_path)
    assert code == 2
    error = capsys.readouterr().err
    assert "seeds of one row" in error and "training." in error
    assert not (out / "table.csv").exists()


def test_the_holm_family_is_one_dataset_and_loss(tmp_path):
    """Bug: one Holm family over every dataset x loss (the p-values of all groups adjusted together)."""
    rng = np.random.default_rng(1)
    for loss in ("ms", "contrastive"):
        seeded(tmp_path, "digits", "baseline", loss, range(3), 0.6, rng)
        seeded(tmp_path, "digits", "symm", loss, range(3), 0.65, rng)
    code, out = table(tmp_path)
    assert code == 0
    rows = read(out).set_index("loss")
    for loss in ("ms", "contrastive"):
        row = rows[rows.method == "symm"].loc[loss]
        assert row["recall@1_p"] < 0.5  # adjusted over two, it would double
        assert row["recall@1_p_holm"] == pytest.approx(row["recall@1_p"], rel=1e-6), loss


def test_a_two_seed_row_takes_the_paired_t_tests_p(tmp_path):
    """Bug: the paired t-test only from 3 pairs (``len(pairs) >= 3``), so a 2-seed row's p is the query
    bootstrap's while its ``test`` column says paired-t."""
    rng = np.random.default_rng(2)
    seeded(tmp_path, "digits", "baseline", "ms", [0, 1], 0.6, rng)
    seeded(tmp_path, "digits", "symm", "ms", [0, 1], 0.66, rng)
    code, out = table(tmp_path)
    assert code == 0
    runs = {(m, s): json.loads((tmp_path / "runs" / "digits" / m / "ms" / f"seed{s}" / "metrics.json").read_text())["recall@1"]
            for m in ("baseline", "symm") for s in (0, 1)}  # fmt: skip
    expected = scipy_stats.ttest_rel([runs[("symm", s)] for s in (0, 1)], [runs[("baseline", s)] for s in (0, 1)]).pvalue
    row = read(out).set_index("method").loc["symm"]
    assert row["test"] == "paired-t" and row["pairs"] == 2
    assert row["recall@1_p"] == pytest.approx(expected, abs=1e-6)


def test_the_summarys_p_holm_is_the_adjusted_p(tmp_path):
    """Bug: the summary's "p (Holm)" column holds the raw p (``record[f"{name}_p"]``)."""
    rng = np.random.default_rng(3)
    seeded(tmp_path, "digits", "baseline", "ms", range(3), 0.6, rng)
    seeded(tmp_path, "digits", "symm", "ms", range(3), 0.64, rng)
    seeded(tmp_path, "digits", "sgar", "ms", range(3), 0.62, rng)
    code, out = table(tmp_path)
    assert code == 0
    full = read(out).set_index("method")
    p = [full.loc[m, "recall@1_p"] for m in ("symm", "sgar")]
    adjusted = stats.holm(p)
    assert min(abs(a - b) for a, b in zip(adjusted, p)) > 0.01  # the two differ where the summary shows them
    brief = read(out, "summary.csv").set_index("method")
    for method, p_holm in zip(("symm", "sgar"), adjusted):
        assert brief.loc[method, "R@1 p (Holm)"] == pytest.approx(p_holm, abs=0.005), method
        assert f"| {p_holm:.2g} |" in (out / "summary.md").read_text()


def test_the_headline_metrics_of_two_losses_are_kept_apart(tmp_path):
    """Bug: DVC's headline metrics of every dataset x loss written into one level (``node = out``): the second
    loss's numbers overwrite the first's."""
    rng = np.random.default_rng(4)
    for loss, gain in (("ms", 0.05), ("contrastive", -0.05)):
        seeded(tmp_path, "digits", "baseline", loss, range(2), 0.6, rng)
        seeded(tmp_path, "digits", "symm", loss, range(2), 0.6 + gain, rng)
    code, out = table(tmp_path)
    assert code == 0
    headline = json.loads((out / "metrics.json").read_text())
    full = read(out).set_index(["loss", "method"])
    for loss in ("ms", "contrastive"):
        # metrics.json rounds to 2 decimals what table.csv holds to 6
        assert headline[f"digits/{loss}"]["symm ΔR@1"] == pytest.approx(full.loc[(loss, "symm"), "recall@1_delta"], abs=0.006)
        assert headline[f"digits/{loss}"]["baseline R@1"] == pytest.approx(full.loc[(loss, "baseline"), "recall@1_mean"], abs=0.006)
    assert headline["digits/ms"]["symm ΔR@1"] > 0 > headline["digits/contrastive"]["symm ΔR@1"]


def test_gpu_hours_count_the_sampling_and_the_fine_tuning(tmp_path):
    """Bugs: a row's GPU-hours leave out its images' sampling (``gpu_hours: on_gpu / 3600``), or the shared
    generator's leave out the fine-tuning (``generator_gpu_seconds: 0``)."""
    rng = np.random.default_rng(5)
    seeded(tmp_path, "cub200", "baseline", "ms", range(2), 0.6, rng, seconds=100.0)
    seeded(tmp_path, "cub200", "blender", "ms", range(2), 0.6, rng, seconds=100.0)
    generation = tmp_path / "generation.csv"
    pd.DataFrame([
        {"dataset": "cub200", "image_set": "blender", "operator": "all", "images": 7200, "seconds_per_image": 0.5,
         "generator_train_seconds": 7200.0, "generator": "stable-diffusion", "device": "cuda"},
    ]).to_csv(generation, index=False)  # fmt: skip
    code, out = table(tmp_path, "--generation", str(generation))
    assert code == 0
    brief = read(out, "summary.csv").set_index("method")
    assert float(brief.loc["blender", "GPU-h"]) == pytest.approx(1.0)  # 7200 images x 0.5 s on CUDA; training on the CPU
    assert float(brief.loc["blender", "shared generator GPU-h"]) == pytest.approx(2.0)  # the per-class fine-tuning, 7200 s
    code = main(["compare", "--config", str(tmp_path / NO_CONFIG), "--table", str(out / "table.csv"), "--generation", str(generation),
                 "--out-csv", str(out / "comparison.csv"), "--out-report", str(out / "comparison.md"),
                 "--figure-dir", str(out / "figures"), str(tmp_path / "runs")])  # fmt: skip
    assert code == 0
    comparison = read(out, "comparison.csv").set_index("method")
    assert float(comparison.loc["blender", "gpu_hours"]) == pytest.approx(1.0)
    assert float(comparison.loc["blender", "generator_gpu_hours"]) == pytest.approx(2.0)


def test_published_vs_ours_takes_the_rows_own_control(tmp_path):
    """Bug: the comparison's "published vs ours" starts from plain baseline (``by_name.loc[BASELINE]``) instead of
    the row's control (IAA's ``baseline+beta=40``)."""
    rng = np.random.default_rng(6)
    googlenet = {"backbone": "googlenet", "embedding_dim": 512}
    seeded(tmp_path, "cub200", "baseline", "triplet", range(2), 0.40, rng, dataset_settings=googlenet)
    seeded(tmp_path, "cub200", "baseline+beta=40", "triplet", range(2), 0.55, rng, dataset_settings=googlenet, control=None)
    seeded(tmp_path, "cub200", "iaa", "triplet", range(2), 0.60, rng, dataset_settings=googlenet, control="baseline+beta=40")
    code, out = table(tmp_path)
    assert code == 0
    code = main(["compare", "--config", str(tmp_path / NO_CONFIG), "--table", str(out / "table.csv"),
                 "--out-csv", str(out / "comparison.csv"), "--out-report", str(out / "comparison.md"),
                 "--figure-dir", str(out / "figures"), str(tmp_path / "runs")])  # fmt: skip
    assert code == 0
    means = read(out).set_index("method")["recall@1_mean"]
    control, value = means["baseline+beta=40"], means["iaa"]
    line = next(line for line in (out / "comparison.md").read_text().splitlines() if line.startswith("| cub200 | triplet | googlenet 512-d | iaa |"))
    assert line.endswith(f"| {control:.1f} → {value:.1f} ({value - control:+.1f}) |"), line


def test_the_summarys_intervals_agree_with_its_verdicts_and_state_the_power(tmp_path):
    """Bugs: the summary shows the unadjusted t interval beside the Holm verdict (an interval that excludes 0 on a
    row that is not significant), or the MDD at α instead of α / m."""
    rng = np.random.default_rng(15)  # a draw where sgar's unadjusted t interval excludes 0, its Holm p does not
    methods = {"symm": 0.63, "sgar": 0.615, "iaa": 0.61, "blender": 0.60}
    seeded(tmp_path, "digits", "baseline", "ms", range(3), 0.6, rng)
    for method, mean in methods.items():
        seeded(tmp_path, "digits", method, "ms", range(3), mean, rng)
    code, out = table(tmp_path)
    assert code == 0
    full = read(out).set_index("method")
    brief = read(out, "summary.csv").set_index("method")
    unadjusted_excludes = 0
    for method in methods:
        row = full.loc[method]
        low, high = brief.loc[method, "R@1 Δ low"], brief.loc[method, "R@1 Δ high"]
        significant = row["recall@1_significant"] == "yes"
        assert (low > 0 or high < 0) == significant, (method, low, high, row["recall@1_p_holm"])
        unadjusted_excludes += (row["recall@1_delta_ci_low"] > 0 or row["recall@1_delta_ci_high"] < 0) and not significant
        # The MDD at α / m from the paired spread over the seeds (points), independently of the table's code path.
        sd = row["recall@1_delta_std"] / 100
        assert row["recall@1_mdd"] == pytest.approx(100 * stats.minimal_detectable_difference(sd, 3, 0.05 / 4), abs=1e-4)  # table.csv: 6 decimals
        verdict = brief.loc[method, "R@1 verdict"]
        if not significant:
            assert verdict == ("underpowered" if row["recall@1_mdd"] > abs(row["recall@1_delta"]) else "not significant")
    assert unadjusted_excludes, "the fixture should hold a row the unadjusted interval would call wrongly"
    assert "underpowered" in (out / "summary.md").read_text()
