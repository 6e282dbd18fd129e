import subprocess
from pathlib import Path
import sys

import numpy as np
import pandas as pd
import pytest

from dmlsynth import registry, resolve
from dmlsynth.layout import Layout, TableFiles
from dmlsynth.compare import CompareError, write_comparison
from dmlsynth.published import published
from dmlsynth.table import collect, read_table, write_table
from dmlsynth.config import filled
from tests.helpers.runs import make_run, simulated_hits

LOSSES = ("multi_similarity", "proxy_anchor")


def generation_report(device="cuda"):
    rows = [
        {"dataset": "cub200", "image_set": "blender", "operator": op, "images": images, "seconds_per_image": 0.5,
         "generator_train_seconds": 0.0, "generator": "stable-diffusion", "device": device}
        for op, images in (("all", 100), ("union", 50), ("intersection", 50))
    ]  # fmt: skip
    frame = pd.DataFrame(rows)
    return frame if device is not None else frame.drop(columns="device")


@pytest.fixture
def results(tmp_path):
    rng = np.random.default_rng(0)
    for loss in LOSSES:
        for seed in range(2):
            make_run(tmp_path, "cub200", "baseline", loss, seed, simulated_hits(rng, 0.6, 0.0), device="cuda", seconds=3600.0)
            make_run(tmp_path, "cub200", "iaa", loss, seed, simulated_hits(rng, 0.7, 0.0), device="cuda", seconds=1800.0)
            make_run(tmp_path, "cub200", "blender", loss, seed, simulated_hits(rng, 0.6, 0.0), device="cuda", seconds=7200.0)
    out = tmp_path / "results"
    write_table([tmp_path / "runs"], TableFiles.under(str(out)), filled({"statistics": {"bootstrap_samples": 300}})["statistics"], generation_report())
    return tmp_path, out


def compare(results, generation=None):
    root, out = results
    return write_comparison(
        read_table(out / "table.csv"), collect([root / "runs"]), generation, out / "comparison.csv", out / "comparison.md", out / "figures",
        filled({})["statistics"],
    )


def test_comparison_has_statistics_published_numbers_and_cost(results):
    frame = compare(results, generation_report()).set_index(["loss", "method"])
    _, out = results
    table = read_table(out / "table.csv").set_index(["loss", "method"])
    iaa = frame.loc[("multi_similarity", "iaa")]
    # The table's paired statistics, unchanged.
    for column in ("recall@1_delta", "recall@1_delta_ci_low", "recall@1_delta_boot_high", "map@r_p_holm"):
        assert iaa[column] == pytest.approx(table.loc[("multi_similarity", "iaa"), column])
    assert iaa["recall@1_significant"] == table.loc[("multi_similarity", "iaa"), "recall@1_significant"]
    # Published: every IAA row on CUB, the same-loss gain (GoogLeNet MS 56.2 -> 62.1).
    assert "Multi-Similarity, GoogLeNet 512-d: 56.2 → 62.1 (+5.9)" in iaa["published"]
    assert "Multi-Similarity, ResNet-50 512-d: – → 68.5" in iaa["published"]
    assert iaa["published_gain_same_loss"] == pytest.approx(5.9)
    assert frame.loc[("proxy_anchor", "blender"), "published_gain_same_loss"] == pytest.approx(1.9)
    assert np.isnan(frame.loc[("proxy_anchor", "iaa"), "published_gain_same_loss"])  # IAA published no Proxy-Anchor
    assert pd.isna(frame.loc[("multi_similarity", "baseline"), "published"])
    # Cost: seconds on CUDA / 3600; generation of the method's image set ('all' row: 100 images x 0.5 s).
    assert iaa["train_seconds_per_seed"] == 1800.0 and iaa["train_seconds_total"] == 3600.0
    assert iaa["gpu_hours"] == pytest.approx(1.0) and iaa["generation_seconds"] == 0.0
    blender = frame.loc[("multi_similarity", "blender")]
    assert blender["train_device"] == "cuda" and blender["generation_seconds"] == pytest.approx(50.0)
    assert blender["gpu_hours"] == pytest.approx(2 * 2.0 + 50.0 / 3600)
    assert frame.loc[("multi_similarity", "baseline"), "gpu_hours"] == pytest.approx(2.0)


def test_report_files(results):
    root, out = results
    compare(results, generation_report())
    layout = Layout(data="d", results=str(out), logs="l")
    for loss in LOSSES:
        assert Path(layout.forest_figure("cub200", loss)).read_bytes()[:4] == b"\x89PNG"
    report = (out / "comparison.md").read_text()
    for loss in LOSSES:
        assert f"## cub200 · {loss}" in report
        assert f"![forest plot](figures/forest_cub200_{loss}.png)" in report
    assert "| iaa | baseline | 2 |" in report and "## Published numbers" in report
    assert "| baseline | — (a control) | 2 |" in report
    assert "Each method is compared with its control (`baseline`)" in report
    raw = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    assert (raw.loc[raw.method == "baseline", "recall@1_delta"] == "n/a").all()
    # The Snakemake rule declares the same forest plots the command writes.
    config = {"datasets": ["cub200"], "methods": ["baseline", "iaa", "blender"], "losses": list(LOSSES), "seeds": [0, 1]}
    for path in layout.comparison_outputs(resolve.comparison_groups(filled(config))):
        assert Path(path).is_file(), path


def test_images_sampled_on_the_cpu_cost_no_gpu_hours(results):
    frame = compare(results, generation_report(device="cpu")).set_index(["loss", "method"])
    blender = frame.loc[("multi_similarity", "blender")]
    assert blender["generation_seconds"] == pytest.approx(50.0)
    assert blender["gpu_hours"] == pytest.approx(2 * 2.0)  # its two CUDA training runs only


def test_generation_cost_needs_the_report_and_counts_gpu_only_when_known(results):
    with pytest.raises(CompareError, match="pass --generation results/generation.csv"):
        compare(results, None)
    frame = compare(results, generation_report(device=None)).set_index(["loss", "method"])
    assert np.isnan(frame.loc[("multi_similarity", "blender"), "gpu_hours"])  # generation device unknown
    assert frame.loc[("multi_similarity", "iaa"), "gpu_hours"] == pytest.approx(1.0)


def test_table_and_runs_must_match(results):
    root, out = results
    table = read_table(out / "table.csv")
    runs = [r for r in collect([root / "runs"]) if not (r.method == "iaa" and r.seed == 1)]
    with pytest.raises(CompareError, match="rebuild the table from the same runs"):
        write_comparison(table, runs, generation_report(), out / "c.csv", out / "c.md", out / "figures", filled({})["statistics"])


def test_published_numbers_use_project_names():
    frame = published()
    assert set(frame["method"].dropna()) <= set(registry.METHODS)  # empty: a base loss's own paper
    assert set(frame["loss"].dropna()) <= set(registry.LOSSES)
    assert set(frame["dataset"]) <= set(registry.DATASETS)
    row = frame[(frame.method == "symm") & (frame.loss == "triplet") & (frame.dataset == "cars196")].iloc[0]
    assert (row.base_recall_at_1, row.method_recall_at_1, row.gain) == pytest.approx((45.1, 69.7, 24.6))


def test_cli_compare_without_table_is_a_clear_error(tmp_path, repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "compare", "--config", "params.yaml", "--table", str(tmp_path / "table.csv"),
         "--out-csv", str(tmp_path / "c.csv"), "--out-report", str(tmp_path / "c.md"), "--figure-dir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=repo_root,
    )  # fmt: skip
    assert result.returncode == 2 and "build the results table first" in result.stderr
    assert "Traceback" not in result.stderr


def test_baseline_rows_show_the_base_loss_paper():
    from dmlsynth.published import matching

    frame = published()
    rows = matching(frame, "cub200", "baseline", "potential_field")
    assert len(rows) == 1 and rows.iloc[0].method_recall_at_1 == 73.4 and rows.iloc[0].method_recall_at_1_std == 0.3
    assert matching(frame, "cub200", "baseline", "triplet").empty
    blender = matching(frame, "cars196", "blender", "potential_field")
    assert set(blender.loss) == {"proxy_anchor", "potential_field"}


def test_report_puts_the_protocols_published_numbers_beside_ours(tmp_path):
    """IAA's protocol (GoogLeNet 512-d, triplet, CUB): the paper's 54.4 -> 58.9 beside our baseline -> iaa means;
    a ResNet-50 run of the same method and loss has no published number to stand beside."""
    rng = np.random.default_rng(1)
    googlenet = {"backbone": "googlenet", "embedding_dim": 512}
    for seed in range(2):
        make_run(tmp_path, "cub200", "baseline", "triplet", seed, simulated_hits(rng, 0.5, 0.0), dataset_settings=googlenet)
        make_run(tmp_path, "cub200", "iaa", "triplet", seed, simulated_hits(rng, 0.6, 0.0), dataset_settings=googlenet)
        make_run(tmp_path, "cars196", "baseline", "triplet", seed, simulated_hits(rng, 0.5, 0.0))
        make_run(tmp_path, "cars196", "iaa", "triplet", seed, simulated_hits(rng, 0.6, 0.0))
    out = tmp_path / "results"
    write_table([tmp_path / "runs"], TableFiles.under(str(out)), filled({"statistics": {"bootstrap_samples": 200}})["statistics"])
    table = read_table(out / "table.csv")
    frame = write_comparison(table, collect([tmp_path / "runs"]), None, out / "c.csv", out / "c.md", out / "figures", filled({})["statistics"])
    rows = frame.set_index(["dataset", "method"])
    assert rows.loc[("cub200", "iaa"), "backbone"] == "googlenet 512-d"
    assert (rows.loc[("cub200", "iaa"), "published_base_same_setting"], rows.loc[("cub200", "iaa"), "published_method_same_setting"]) == (54.4, 58.9)
    # Symmetrical Synthesis's and IAA's GoogLeNet triplet baselines differ (35.9, 54.4): no single one for baseline.
    assert np.isnan(rows.loc[("cub200", "baseline"), "published_base_same_setting"])
    assert np.isnan(rows.loc[("cars196", "iaa"), "published_method_same_setting"])  # resnet50: IAA published no triplet row
    report = (out / "c.md").read_text()
    ours = table.set_index(["dataset", "method"])["recall@1_mean"]
    base, value = 100 * ours[("cub200", "baseline")], 100 * ours[("cub200", "iaa")]
    assert f"| cub200 | triplet | googlenet 512-d | iaa | 54.4 → 58.9 (+4.5) | {base:.1f} → {value:.1f} ({value - base:+.1f}) |" in report
    assert "| cars196 | triplet | resnet50 512-d | iaa | no published number with this backbone and loss |" in report


def test_published_rows_cover_the_four_papers_tables():
    frame = published()
    assert frame["source"].notna().all() and set(frame["backbone_key"]) <= set(registry.BACKBONES)
    key = ["method", "loss", "backbone_key", "dataset"]
    expected = {
        ("iaa", "triplet", "googlenet", "cub200"): (54.4, 58.9), ("iaa", "triplet", "googlenet", "cars196"): (69.0, 72.4),
        ("iaa", "contrastive", "googlenet", "cars196"): (74.1, 80.8), ("iaa", "multi_similarity", "googlenet", "inshop"): (87.0, 89.3),
        ("symm", "angular", "googlenet", "cub200"): (53.6, 54.9), ("symm", "angular", "googlenet", "cars196"): (71.3, 75.5),
        ("symm", "semihard_triplet", "googlenet", "cub200"): (40.6, 55.0), ("symm", "semihard_triplet", "googlenet", "cars196"): (53.2, 68.5),
        ("symm", "lifted_structure", "googlenet", "cub200"): (46.9, 54.9), ("symm", "lifted_structure", "googlenet", "cars196"): (59.9, 66.6),
        ("symm", "n_pairs", "googlenet", "sop"): (66.4, 73.2), ("sgar", "proxy_anchor", "bn_inception", "inshop"): (91.5, 91.7),
    }  # fmt: skip
    rows = frame.set_index(key)
    for where, numbers in expected.items():
        assert tuple(rows.loc[where, ["base_recall_at_1", "method_recall_at_1"]]) == numbers, where
    bn = frame[(frame.method == "iaa") & (frame.backbone_key == "bn_inception")]
    assert dict(zip(bn.dataset, bn.method_recall_at_1)) == {"cub200": 66.5, "cars196": 85.3, "sop": 80.5, "inshop": 92.0}
    for method, datasets in {"symm": {"cub200", "cars196", "sop"}, "iaa": {"cub200", "cars196", "sop", "inshop"},
                             "sgar": {"cub200", "cars196", "sop", "inshop"}, "blender": {"cub200", "cars196"}}.items():  # fmt: skip
        assert set(frame.loc[frame.method == method, "dataset"]) == datasets, method
    assert frame.duplicated(["method", "paper", "backbone_key", "loss", "dataset"]).sum() == 0


def test_a_shared_generator_is_counted_once_and_cpu_rows_have_blank_gpu_hours(tmp_path):
    """blender and sd_plain sample from one generator: its training is stated once, in neither row's cost."""
    rng = np.random.default_rng(3)
    for seed in range(2):
        for method in ("baseline", "blender", "sd_plain"):
            make_run(tmp_path, "digits", method, "multi_similarity", seed, simulated_hits(rng, 0.7, 0.0), seconds=10.0)
    report = pd.DataFrame(
        [{"dataset": "digits", "image_set": image_set, "operator": "all", "images": 40, "seconds_per_image": 0.25,
          "generator_train_seconds": 300.0, "generator": "embedded", "device": "cpu"} for image_set in ("blender", "plain")]
    )  # fmt: skip
    out = tmp_path / "results"
    write_table([tmp_path / "runs"], TableFiles.under(str(out)), filled({"statistics": {"bootstrap_samples": 100}})["statistics"], report)
    frame = write_comparison(
        read_table(out / "table.csv"), collect([tmp_path / "runs"]), report, out / "comparison.csv", out / "comparison.md", out / "figures",
        filled({})["statistics"],
    ).set_index("method")
    assert frame.loc["blender", "generation_seconds"] == pytest.approx(10.0)  # its own sampling: 40 x 0.25 s
    assert frame.loc["sd_plain", "generator_train_seconds"] == 300.0 and frame.loc["baseline", "generator_train_seconds"] == 0
    for text in ((out / "comparison.md").read_text(), (out / "summary.md").read_text()):
        assert text.count("300 s of training") == 1, text  # once per dataset, in no row
        assert "used by `blender`, `sd_plain`" in text
        assert "| 10.0 | 10 |  |" in text or "| 10 | 10 |  |" in text  # train s / seed, sampling s, GPU-h blank
    raw = pd.read_csv(out / "comparison.csv", keep_default_na=False).set_index("method")
    assert (raw["gpu_hours"] == "").all()
    assert float(raw.loc["blender", "recall@1_mean"]) > 1  # in %, like table.csv
