import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from dmlsynth import stats
from dmlsynth.layout import TableFiles
from dmlsynth.table import TableError, collect, read_table, write_table
from dmlsynth.config import filled
from tests.helpers.runs import QUERY_DIFFICULTY, make_run, simulated_hits

def write(root, folders, **settings):
    out = root / "out"
    table = write_table(folders, TableFiles.under(str(out)), filled({"statistics": settings})["statistics"])
    return table, out


def test_known_difference_is_covered_and_flagged(tmp_path):
    # baseline finds a first hit for 60 % of queries, "better" for 70 % (+0.10), "same" for 60 %.
    rng = np.random.default_rng(7)
    folders = []
    for seed in range(5):
        effect = rng.normal(scale=0.01)  # a seed is a bit luckier or unluckier for every method alike
        folders.append(make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.60, effect)))
        folders.append(make_run(tmp_path, "digits", "better", "ms", seed, simulated_hits(rng, 0.70, effect)))
        folders.append(make_run(tmp_path, "digits", "same", "ms", seed, simulated_hits(rng, 0.60, effect)))
    table, out = write(tmp_path, [tmp_path / "runs"])
    rows = table.set_index("method")
    better, same = rows.loc["better"], rows.loc["same"]
    # Two truths: over seeds, the expected difference on these 400 test queries; over the
    # population of queries (uniform difficulty), exactly 0.10 and 0.
    spread = np.hypot(0.01, 0.05)
    on_test_set = np.mean(scipy_stats.norm.cdf((0.70 - QUERY_DIFFICULTY) / spread) - scipy_stats.norm.cdf((0.60 - QUERY_DIFFICULTY) / spread))
    for row, seeds_truth, population_truth in ((better, on_test_set, 0.10), (same, 0.0, 0.0)):
        assert row["recall@1_delta_ci_low"] <= seeds_truth <= row["recall@1_delta_ci_high"]
        assert row["recall@1_delta_boot_low"] <= population_truth <= row["recall@1_delta_boot_high"]
        assert row["test"] == "paired-t" and row["pairs"] == 5
    assert better["recall@1_significant"] is True and better["recall@1_p_holm"] < 0.01
    assert same["recall@1_significant"] is False

    # The numbers are the paired t-test's, Holm-adjusted over the two methods compared.
    runs = {(r.method, r.seed): r.metrics["recall@1"] for r in collect([tmp_path / "runs"])}
    b = np.array([runs[("baseline", s)] for s in range(5)])
    m = np.array([runs[("better", s)] for s in range(5)])
    s_ = np.array([runs[("same", s)] for s in range(5)])
    assert better["recall@1_delta"] == pytest.approx((m - b).mean())
    assert better["recall@1_p"] == pytest.approx(scipy_stats.ttest_rel(m, b).pvalue)
    ci = scipy_stats.ttest_rel(m, b).confidence_interval(0.95)
    assert (better["recall@1_delta_ci_low"], better["recall@1_delta_ci_high"]) == pytest.approx((ci.low, ci.high))
    p_same = scipy_stats.ttest_rel(s_, b).pvalue
    assert [better["recall@1_p_holm"], same["recall@1_p_holm"]] == pytest.approx(
        stats.holm([better["recall@1_p"], p_same]).tolist()
    )
    assert rows.loc["baseline", "recall@1_mean"] == pytest.approx(b.mean())
    assert rows.loc["baseline", "recall@1_std"] == pytest.approx(b.std(ddof=1))
    assert np.isnan(rows.loc["baseline", "recall@1_delta"]) and rows.loc["baseline", "recall@1_significant"] is None

    # CSV: every column, 'n/a' where a value does not exist, yes/no significance; read back equal.
    text = (out / "table.csv").read_text()
    header = text.splitlines()[0].split(",")
    # The row, then its numbers, then the settings and provenance of its runs.
    assert header[:8] == ["dataset", "method", "loss", "control", "seeds", "pairs", "test", "recall@1_mean"]
    assert header[-9:] == ["optimisation_steps", "batch_size", "threads", "device", "cpu_isa", "seed_list", "chosen_epochs", "params_hashes", "git_commits"]
    for metric in ("recall@1", "map@r", "nmi"):
        assert f"{metric}_delta_boot_high" in header and f"{metric}_significant" in header
    back = read_table(out / "table.csv").set_index("method")
    assert back.loc["better", "recall@1_significant"] == True  # noqa: E712 - read back as a bool
    assert np.isnan(back.loc["baseline", "recall@1_delta"])
    assert back.loc["better", "seed_list"] == "0;1;2;3;4"
    assert back.loc["better", "params_hashes"] == ";".join(f"h-better-{s}" for s in range(5))
    payload = json.loads((out / "table.json").read_text())
    assert payload["table"]["digits"]["baseline"]["ms"]["recall@1_delta"] == "n/a"
    assert payload["table"]["digits"]["better"]["ms"]["recall@1_significant"] is True
    assert payload["runs"]["digits"]["same"]["ms"]["seed3"]["params_hash"] == "h-same-3"


def test_one_seed_tables_say_na_and_use_the_query_bootstrap(tmp_path):
    rng = np.random.default_rng(0)
    folders = [
        make_run(tmp_path, "digits", "baseline", "ms", 0, simulated_hits(rng, 0.6, 0.0)),
        make_run(tmp_path, "digits", "better", "ms", 0, simulated_hits(rng, 0.8, 0.0)),
    ]
    table, out = write(tmp_path, folders, bootstrap_samples=1000)
    better = table.set_index("method").loc["better"]
    assert better["test"] == "bootstrap" and better["pairs"] == 1
    assert np.isnan(better["recall@1_std"]) and np.isnan(better["recall@1_delta_ci_low"])
    assert better["recall@1_delta_boot_low"] <= 0.2 <= better["recall@1_delta_boot_high"]
    assert better["recall@1_boot_low"] < better["recall@1_mean"] < better["recall@1_boot_high"]
    # The query bootstrap's p is there, but one training run gets no verdict (training randomness unmeasured).
    assert better["recall@1_p"] < 0.01
    assert better["recall@1_significant"] is None and np.isnan(better["recall@1_p_holm"])
    raw = pd.read_csv(out / "table.csv", keep_default_na=False).set_index("method")
    assert raw.loc["baseline", "recall@1_std"] == "n/a" and raw.loc["better", "recall@1_std"] == "n/a"
    assert raw.loc["better", "recall@1_significant"] == "n/a"
    assert "one training run" in (out / "summary.md").read_text()


def test_same_inputs_give_the_same_table(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(2):
        make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.6, 0.0))
        make_run(tmp_path, "digits", "other", "ms", seed, simulated_hits(rng, 0.62, 0.0))
    write(tmp_path, [tmp_path / "runs"])
    first = (tmp_path / "out" / "table.csv").read_text()
    write(tmp_path, [tmp_path / "runs"])
    assert (tmp_path / "out" / "table.csv").read_text() == first


def test_identity_and_provenance_come_from_the_run_record(tmp_path):
    rng = np.random.default_rng(0)
    # Folder names say nothing: dataset, method, loss and seed are read from run.yaml.
    make_run(tmp_path, "digits", "baseline", "triplet", 4, simulated_hits(rng, 0.6, 0.0), folder=tmp_path / "a", commit="abc")
    make_run(tmp_path, "digits", "baseline", "triplet", 2, simulated_hits(rng, 0.6, 0.0), folder=tmp_path / "b", commit="def", dirty=True)
    table, _ = write(tmp_path, [tmp_path / "a", tmp_path / "b" / "metrics.json"])
    row = table.iloc[0]
    assert (row["dataset"], row["method"], row["loss"], row["seeds"]) == ("digits", "baseline", "triplet", 2)
    assert row["seed_list"] == "2;4"
    assert row["params_hashes"] == "h-baseline-2;h-baseline-4"
    assert row["git_commits"] == "def+dirty;abc"
    assert row["test"] == "n/a" and np.isnan(row["pairs"])


@pytest.mark.parametrize("missing", ["metrics.json", "embeddings.npz", "run.yaml", "queries.npz"])
def test_incomplete_runs_are_refused_with_the_job_to_rerun(tmp_path, missing):
    folder = make_run(tmp_path, "digits", "baseline", "ms", 0, np.ones(20))
    (folder / missing).unlink()
    job = "training" if missing in ("run.yaml", "embeddings.npz") else "evaluation"
    with pytest.raises(TableError, match=rf"run {folder} is incomplete: {missing} missing; run its {job} job"):
        write(tmp_path, [folder])
    assert not (tmp_path / "out" / "table.csv").exists()


def test_inconsistent_runs_are_refused(tmp_path):
    a = make_run(tmp_path, "digits", "baseline", "ms", 0, np.ones(20))
    b = make_run(tmp_path, "digits", "baseline", "ms", 0, np.ones(20), folder=tmp_path / "copy")
    with pytest.raises(TableError, match="are the same run"):
        write(tmp_path, [a, b])
    other = make_run(tmp_path, "digits", "symm", "ms", 0, np.ones(20), labels=np.arange(20) % 4)
    with pytest.raises(TableError, match="different test images"):
        write(tmp_path, [a, other])
    stale = make_run(tmp_path, "digits", "iaa", "ms", 0, np.ones(20))
    (stale / "metrics.json").write_text(json.dumps({"recall@1": 0.5, "map@r": 0.5, "nmi": 1.0}))
    with pytest.raises(TableError, match="disagree on recall@1"):
        write(tmp_path, [a, stale])
    (stale / "metrics.json").write_text("{not json")
    with pytest.raises(TableError, match="re-run its evaluation"):
        write(tmp_path, [stale])
    with pytest.raises(TableError, match="does not exist"):
        write(tmp_path, [tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(TableError, match="holds no run folders"):
        write(tmp_path, [tmp_path / "empty"])


def test_cli_reports_a_bad_path_without_traceback(tmp_path, repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "dmlsynth", "table", "--config", "params.yaml", "--out-dir", str(tmp_path / "results"),
         str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=repo_root,
    )  # fmt: skip
    assert result.returncode == 2
    assert "dmlsynth table: error:" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# --- What the table compares, as the workflow's table job computes it (dmlsynth.table.write_table) ----------


def test_each_row_is_compared_with_its_own_control(tmp_path):
    # IAA's runs use beta = 40: its control is baseline+beta=40, not plain baseline.
    rng = np.random.default_rng(3)
    beta40 = {"loss_params": {"beta": 40.0}}
    for seed in range(3):
        make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.5, 0.0), params={"loss_params": {"beta": 50.0}})
        make_run(tmp_path, "digits", "baseline+beta=40", "ms", seed, simulated_hits(rng, 0.7, 0.0), params=beta40)
        make_run(tmp_path, "digits", "iaa", "ms", seed, simulated_hits(rng, 0.7, 0.0), params=beta40, control="baseline+beta=40")
    table, out = write(tmp_path, [tmp_path / "runs"], bootstrap_samples=300)
    rows = table.set_index("method")
    assert rows.loc["iaa", "control"] == "baseline+beta=40" and rows.loc["iaa", "pairs"] == 3
    runs = {(r.method, r.seed): r.metrics["recall@1"] for r in collect([tmp_path / "runs"])}
    assert rows.loc["iaa", "recall@1_delta"] == pytest.approx(np.mean([runs[("iaa", s)] - runs[("baseline+beta=40", s)] for s in range(3)]))
    # Controls are rows of their own, compared with nothing.
    assert rows.loc["baseline+beta=40", "control"] == "n/a" and np.isnan(rows.loc["baseline+beta=40", "recall@1_delta"])
    assert list(table["method"]) == ["baseline", "baseline+beta=40", "iaa"]


def test_a_pair_that_differs_in_more_than_the_synthesis_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    a = make_run(tmp_path, "digits", "baseline", "ms", 0, simulated_hits(rng, 0.6, 0.0), params={"loss_params": {"beta": 50.0}})
    b = make_run(tmp_path, "digits", "iaa", "ms", 0, simulated_hits(rng, 0.6, 0.0), params={"loss_params": {"beta": 40.0}})
    with pytest.raises(TableError, match=r"differ in loss_params.beta \(40.0 vs 50.0\)"):
        write(tmp_path, [a, b])
    c = make_run(tmp_path, "digits", "symm", "ms", 0, simulated_hits(rng, 0.6, 0.0), params={"loss_params": {"beta": 50.0}}, steps=150)
    with pytest.raises(TableError, match=r"differ in optimisation steps \(150 vs 100\)"):
        write(tmp_path, [a, c])
    d = make_run(tmp_path, "digits", "sgar", "ms", 0, simulated_hits(rng, 0.6, 0.0), params={"loss_params": {"beta": 50.0}, "training": {"batch_size": 40}})
    with pytest.raises(TableError, match=r"training.batch_size \(40 vs 80\)"):
        write(tmp_path, [a, d])
    assert not (tmp_path / "out" / "table.csv").exists()


def test_seeds_of_one_row_made_with_other_threads_or_devices_are_never_averaged(tmp_path):
    rng = np.random.default_rng(0)
    a = make_run(tmp_path, "digits", "baseline", "ms", 0, simulated_hits(rng, 0.6, 0.0), threads=1)
    b = make_run(tmp_path, "digits", "baseline", "ms", 1, simulated_hits(rng, 0.6, 0.0), threads=2)
    with pytest.raises(TableError, match=r"differ in threads \(2 vs 1\).*resources.threads"):
        write(tmp_path, [a, b])
    c = make_run(tmp_path, "digits", "baseline", "ms", 2, simulated_hits(rng, 0.6, 0.0), device="cuda:0")
    with pytest.raises(TableError, match=r"differ in device \(cuda vs cpu\)"):
        write(tmp_path, [a, c])
    table, _ = write(tmp_path, [a])
    assert (table.iloc[0]["threads"], table.iloc[0]["device"], table.iloc[0]["optimisation_steps"]) == (1, "cpu", 100)


def test_the_query_bootstrap_pairs_each_run_with_its_control(tmp_path):
    # One seed: the method finds the first hit on exactly 12 more of 400 queries than its control
    # (+3 points), and on no query fewer. Resampled together, every replicate of the difference is
    # >= 0 and about +3; resampled independently, the two runs' own noise (±5 points) would swamp it.
    rng = np.random.default_rng(1)
    control = (rng.random(400) < 0.5).astype(float)
    method = control.copy()
    method[np.flatnonzero(control == 0)[:12]] = 1.0
    folders = [make_run(tmp_path, "digits", "baseline", "ms", 0, control), make_run(tmp_path, "digits", "m", "ms", 0, method)]
    row = write(tmp_path, folders, bootstrap_samples=1000)[0].set_index("method").loc["m"]
    assert row["recall@1_delta"] == pytest.approx(0.03)
    assert 0.0 <= row["recall@1_delta_boot_low"] and row["recall@1_delta_boot_high"] <= 0.06
    assert row["recall@1_p"] < 0.01 and row["recall@1_significant"] is None  # one training run: no verdict


def test_significance_is_holm_adjusted_over_the_methods(tmp_path):
    # Three methods each about 1.6 standard errors better than baseline over 5 seeds: each raw p is
    # below 0.05 but not after Holm over the three.
    rng = np.random.default_rng(11)
    base = 0.5 + rng.normal(scale=0.01, size=5)
    hits = lambda rate: (QUERY_DIFFICULTY < rate).astype(float)  # noqa: E731 - hits of exactly that rate
    shifts = {"m1": [0.03, 0.0, 0.02, 0.01, 0.015], "m2": [0.028, 0.0, 0.019, 0.012, 0.016], "m3": [0.03, 0.002, 0.018, 0.01, 0.014]}
    for seed in range(5):
        make_run(tmp_path, "digits", "baseline", "ms", seed, hits(base[seed]))
        for name, shift in shifts.items():
            make_run(tmp_path, "digits", name, "ms", seed, hits(base[seed] + shift[seed]))
    table = write(tmp_path, [tmp_path / "runs"], bootstrap_samples=200)[0].set_index("method")
    raw = table.loc[list(shifts), "recall@1_p"]
    assert (raw < 0.05).all()  # the premise: significant one by one
    assert np.allclose(table.loc[list(shifts), "recall@1_p_holm"], stats.holm(raw.tolist()))
    assert (table.loc[list(shifts), "recall@1_p_holm"] >= 0.05).all()
    assert not table.loc[list(shifts), "recall@1_significant"].any()


def test_pairs_are_the_seeds_both_have(tmp_path):
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.6, 0.0))
    for seed in (0, 1, 2):
        make_run(tmp_path, "digits", "m", "ms", seed, simulated_hits(rng, 0.7, 0.0))
    row = write(tmp_path, [tmp_path / "runs"], bootstrap_samples=200)[0].set_index("method").loc["m"]
    runs = {(r.method, r.seed): r.metrics["recall@1"] for r in collect([tmp_path / "runs"])}
    assert (row["seeds"], row["pairs"]) == (3, 2)
    assert row["recall@1_delta"] == pytest.approx(np.mean([runs[("m", s)] - runs[("baseline", s)] for s in (0, 1)]))
    assert row["recall@1_mean"] == pytest.approx(np.mean([runs[("m", s)] for s in (0, 1, 2)]))


def test_a_run_missing_a_metric_is_refused_not_left_out_of_the_mean(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.6, 0.0))
    metrics = tmp_path / "runs" / "digits" / "baseline" / "ms" / "seed1" / "metrics.json"
    values = json.loads(metrics.read_text())
    del values["nmi"]
    metrics.write_text(json.dumps(values))
    with pytest.raises(TableError, match=r"seed1: its metrics lack nmi, which other runs have"):
        write(tmp_path, [tmp_path / "runs"])


@pytest.mark.parametrize("confidence", [0.8, 0.99])
def test_every_interval_has_the_configured_confidence(tmp_path, confidence):
    rng = np.random.default_rng(5)
    for seed in range(4):
        effect = rng.normal(scale=0.01)
        make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.6, effect))
        make_run(tmp_path, "digits", "m", "ms", seed, simulated_hits(rng, 0.65, effect))
    table = write(tmp_path, [tmp_path / "runs"], confidence=confidence, bootstrap_samples=400)[0].set_index("method")
    runs = {(r.method, r.seed): r.metrics["recall@1"] for r in collect([tmp_path / "runs"])}
    m, b = (np.array([runs[(name, s)] for s in range(4)]) for name in ("m", "baseline"))
    paired = scipy_stats.ttest_rel(m, b).confidence_interval(confidence)
    assert (table.loc["m", "recall@1_delta_ci_low"], table.loc["m", "recall@1_delta_ci_high"]) == pytest.approx((paired.low, paired.high))
    spread = scipy_stats.ttest_1samp(m, 0.0).confidence_interval(confidence)
    assert (table.loc["m", "recall@1_ci_low"], table.loc["m", "recall@1_ci_high"]) == pytest.approx((spread.low, spread.high))


def test_the_summary_and_the_headline_metrics_are_the_tables_numbers(tmp_path):
    rng = np.random.default_rng(7)
    for seed in range(3):
        effect = rng.normal(scale=0.01)
        make_run(tmp_path, "digits", "baseline", "ms", seed, simulated_hits(rng, 0.60, effect), seconds=10.0)
        make_run(tmp_path, "digits", "better", "ms", seed, simulated_hits(rng, 0.75, effect), seconds=20.0)
    table, out = write(tmp_path, [tmp_path / "runs"], bootstrap_samples=300)
    rows = table.set_index("method")
    brief = pd.read_csv(out / "summary.csv", keep_default_na=False).set_index("method")
    assert list(brief.columns[:4]) == ["dataset", "loss", "control", "seeds"]
    assert float(brief.loc["better", "R@1 %"]) == pytest.approx(100 * rows.loc["better", "recall@1_mean"], abs=0.005)
    assert float(brief.loc["better", "R@1 Δ"]) == pytest.approx(100 * rows.loc["better", "recall@1_delta"], abs=0.005)
    assert float(brief.loc["better", "R@1 Δ low"]) == pytest.approx(100 * rows.loc["better", "recall@1_delta_ci_low"], abs=0.005)
    assert float(brief.loc["better", "train s / seed"]) == 20.0 and brief.loc["baseline", "R@1 Δ"] == "n/a"
    assert (brief["GPU-h"] == "").all()  # nothing ran on a GPU: blank, not 0.00
    # One unit in every file: table.csv and table.json hold the same numbers in % and points as the summary.
    raw = pd.read_csv(out / "table.csv").set_index("method")
    assert raw.loc["better", "recall@1_mean"] == pytest.approx(100 * rows.loc["better", "recall@1_mean"], abs=1e-6)
    assert raw.loc["better", "map@r_delta_ci_high"] == pytest.approx(100 * rows.loc["better", "map@r_delta_ci_high"], abs=1e-6)
    assert raw.loc["better", "recall@1_p"] == pytest.approx(rows.loc["better", "recall@1_p"], abs=1e-6)  # p stays a probability
    payload = json.loads((out / "table.json").read_text())
    assert payload["table"]["digits"]["better"]["ms"]["recall@1_delta"] == pytest.approx(100 * rows.loc["better", "recall@1_delta"])
    run = payload["runs"]["digits"]["better"]["ms"]["seed0"]
    assert 1 < run["recall@1"] <= 100 and 1 < run["nmi"] <= 100 and run["train_seconds"] == 20.0  # metrics in %, seconds as they are
    back = read_table(out / "table.csv").set_index("method")
    assert back.loc["better", "recall@1_mean"] == pytest.approx(rows.loc["better", "recall@1_mean"], abs=1e-8)
    text = (out / "summary.md").read_text()
    delta = 100 * rows.loc["better", "recall@1_delta"]
    assert f"| better | baseline | 3 | {100 * rows.loc['better', 'recall@1_mean']:.1f} | **{delta:+.1f} [" in text
    assert "| 20.0 | — |  |" in text  # train s / seed, no images sampled, no GPU-hours
    assert "| baseline | — | 3 |" in text
    headline = json.loads((out / "metrics.json").read_text())
    assert headline == {
        "baseline R@1": round(100 * rows.loc["baseline", "recall@1_mean"], 2),
        "better ΔR@1": round(100 * rows.loc["better", "recall@1_delta"], 2),
    }
    assert (out / "figures" / "recall_at_1.png").read_bytes()[:4] == b"\x89PNG"


def test_the_table_job_draws_one_training_curve_per_method_the_mean_of_its_seeds(tmp_path, monkeypatch):
    """DVC's plot: per dataset x loss, each row's mean training loss per epoch over its seeds, controls dashed."""
    from dmlsynth import figures

    rng = np.random.default_rng(3)
    for loss in ("ms", "triplet"):
        for seed in range(3):
            for method in ("baseline", "better", "baseline+beta=40", "tuned"):
                control = {"tuned": "baseline+beta=40", "better": "baseline"}.get(method)
                make_run(tmp_path, "digits", method, loss, seed, simulated_hits(rng, 0.6, 0.0), control=control)
    drawn = {}
    monkeypatch.setattr(figures, "save_figure", lambda fig, out: drawn.setdefault(str(out), fig))
    write(tmp_path, [tmp_path / "runs"], bootstrap_samples=100)
    [(out, fig)] = drawn.items()
    assert out == TableFiles.under(str(tmp_path / "out")).training_loss
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in panels] == [f"digits · {l}: training loss per epoch" for l in ("ms", "triplet")]
    for ax, loss in zip(panels, ("ms", "triplet")):
        lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
        assert set(lines) == {"baseline", "better", "baseline+beta=40", "tuned"}  # one curve per method, not per run
        for method, line in lines.items():
            logs = [pd.read_csv(tmp_path / "runs" / "digits" / method / loss / f"seed{s}" / "train_log.csv") for s in range(3)]
            assert list(line.get_xdata()) == [1, 2, 3]
            assert np.allclose(line.get_ydata(), np.mean([log["loss"] for log in logs], axis=0))
            assert (line.get_linestyle() == "--") == method.startswith("baseline")  # the controls
        assert len({line.get_color() for line in lines.values()}) == 4


def test_a_run_without_its_training_log_is_named(tmp_path):
    make_run(tmp_path, "digits", "baseline", "ms", 0, np.ones(40))
    (tmp_path / "runs" / "digits" / "baseline" / "ms" / "seed0" / "train_log.csv").unlink()
    with pytest.raises(Exception, match=r"cannot read the training log .*seed0/train_log.csv .*train the run again") as info:
        write(tmp_path, [tmp_path / "runs"], bootstrap_samples=50)
    from dmlsynth.errors import DmlsynthError

    assert isinstance(info.value, DmlsynthError)


def test_intervals_are_bounded_to_the_metrics_range(tmp_path):
    """Near the ceiling the t interval passes 100 %; the table bounds it (a metric in [0, 1], a difference in [-1, 1])."""
    for seed, misses in enumerate((0, 16, 0)):
        hits = np.ones(400)
        hits[:misses] = 0  # R@1: 1.0, 0.96, 1.0 -> t interval of the mean up to ~1.05
        make_run(tmp_path, "digits", "baseline", "ms", seed, hits)
        make_run(tmp_path, "digits", "better", "ms", seed, np.ones(400))
    table, out = write(tmp_path, [tmp_path / "runs"], bootstrap_samples=100)
    rows = table.set_index("method")
    values = [1.0, 0.96, 1.0]
    unbounded = stats.t_interval(values, 0.95)
    assert unbounded.high > 1.0  # the case this test is about
    assert rows.loc["baseline", "recall@1_ci_high"] == 1.0 and rows.loc["baseline", "recall@1_ci_low"] == pytest.approx(unbounded.low)
    assert -1.0 <= rows.loc["better", "recall@1_delta_ci_low"] and rows.loc["better", "recall@1_delta_ci_high"] <= 1.0
    assert pd.read_csv(out / "table.csv").set_index("method").loc["baseline", "recall@1_ci_high"] == 100.0


def test_every_metric_column_is_written_in_points_and_nothing_else():
    from dmlsynth.table import in_points

    frame = pd.DataFrame([{"recall@1_mean": 0.5, "last_epoch.map@r_delta_ci_low": -0.02, "nmi": 0.7, "map@r_p_holm": 0.04,
                           "last_epoch.recall@1_p": 0.3, "train_seconds": 12.0, "seeds": 3}])  # fmt: skip
    out = in_points(frame).iloc[0]
    assert (out["recall@1_mean"], out["last_epoch.map@r_delta_ci_low"], out["nmi"]) == pytest.approx((50.0, -2.0, 70.0))
    assert (out["map@r_p_holm"], out["last_epoch.recall@1_p"], out["train_seconds"], out["seeds"]) == (0.04, 0.3, 12.0, 3)
