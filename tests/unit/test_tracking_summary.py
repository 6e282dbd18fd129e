"""MLflow as its UI expects: one row run per table row, the parent of its seeds' runs, with the row's numbers."""

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from dmlsynth import tracking
from dmlsynth.layout import TableFiles
from dmlsynth.table import write_table
from dmlsynth.config import filled
from tests.helpers.runs import make_run, simulated_hits


def test_every_table_row_is_a_run_with_its_seeds_as_children(tmp_path):
    settings = tracking.settings(filled({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    rng = np.random.default_rng(0)
    folders = [
        make_run(tmp_path, "digits", method, "ms", seed, simulated_hits(rng, rate, 0.0))
        for seed in range(2)
        for method, rate in (("baseline", 0.6), ("better", 0.75))
    ]
    for folder in folders:
        tracking.track_run(folder, settings)  # as the training jobs do
    files = TableFiles.under(str(tmp_path / "results"))
    table = write_table([tmp_path / "runs"], files, filled({"statistics": {"bootstrap_samples": 200}})["statistics"])
    table_run = tracking.track_table(settings, files.all(), table)

    client = MlflowClient(tracking_uri=settings.uri)
    experiment = client.get_experiment_by_name("digits").experiment_id
    rows = {r.info.run_name: r for r in client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'row'")}
    assert set(rows) == {"baseline/ms", "better/ms"}
    better = rows["better/ms"]
    expected = table.set_index("method").loc["better"]
    # In the units of every results file: differences in points, means in %; significance of both metrics.
    assert better.data.metrics["delta_recall_at_1_pp"] == pytest.approx(100 * expected["recall@1_delta"])
    assert better.data.metrics["delta_map_at_r_pp_ci_high"] == pytest.approx(100 * expected["map@r_delta_ci_high"])
    assert better.data.metrics["recall_at_1_pct"] == pytest.approx(100 * expected["recall@1_mean"])
    assert better.data.metrics["delta_map_at_r_significant"] == float(expected["map@r_significant"])
    assert better.data.metrics["delta_recall_at_1_test_p_holm"] == pytest.approx(expected["recall@1_p_holm"])
    # MLflow's chart view orders charts by name: the differences come first.
    names = sorted(better.data.metrics)
    firsts = [name.startswith("delta_") for name in names]
    assert firsts == sorted(firsts, reverse=True) and sum(firsts) == 14  # 7 per metric, all before the means
    assert names[0] == "delta_map_at_r_pp" and names[7] == "delta_recall_at_1_pp"  # each difference before its interval
    assert not any(n.startswith("delta_") for n in rows["baseline/ms"].data.metrics)  # a control has no difference
    assert better.data.params["control"] == "baseline" and better.data.params["seeds"] == "2"
    assert better.data.tags["mlflow.user"] and better.data.tags["mlflow.source.type"] == "JOB"
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{better.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["better/ms/seed0", "better/ms/seed1"]
    # The seeds' runs carry a few tags, their environment as one artifact.
    child = children[0]
    assert not [t for t in child.data.tags if t.startswith("env.")]
    assert "environment.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"summary.md", "table.csv", "metrics.json"} <= {a.path for a in client.list_artifacts(table_run)}
    # The same table again changes nothing; a table of other runs makes new row runs and marks the old.
    assert tracking.track_table(settings, files.all(), table) == table_run
    assert len(client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'row'")) == 2
    table.loc[table.method == "better", "params_hashes"] = "other"
    tracking.track_table(settings, files.all(), table)
    rows = client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'row' and tags.method = 'better'")
    assert sorted(r.data.tags.get("dmlsynth.superseded", "false") for r in rows) == ["false", "true"]


def _times(folder, started, seconds, params_hash=None):
    """Give a made run folder its training's start and end (and another params hash, for an older run)."""
    record = yaml.safe_load((folder / "run.yaml").read_text())
    record.update(started=started, finished=started + seconds, **({"params_hash": params_hash} if params_hash else {}))
    (folder / "run.yaml").write_text(yaml.safe_dump(record))
    return folder


def test_a_row_run_nests_its_own_seed_runs_only_and_lasts_as_long_as_their_training(tmp_path):
    settings = tracking.settings(filled({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    rng = np.random.default_rng(1)
    # An older run of better/ms/seed0 with other params (tracked first, then superseded by the current one), and a
    # run of a seed the row no longer has: neither is one of the current row's runs.
    older = _times(make_run(tmp_path / "old", "digits", "better", "ms", 0, simulated_hits(rng, 0.7, 0.0)), 1000.0, 10.0, "h-older")
    dropped = _times(make_run(tmp_path / "old", "digits", "better", "ms", 2, simulated_hits(rng, 0.7, 0.0)), 1000.0, 10.0, "h-seed2")
    ids = {("old", 0): tracking.track_run(older, settings), ("old", 2): tracking.track_run(dropped, settings)}
    # The same method with two losses (their runs share the params hashes this helper gives: only the loss tells them apart).
    for loss in ("ms", "contrastive"):
        for seed in range(2):
            for method, rate in (("baseline", 0.6), ("better", 0.75)):
                folder = make_run(tmp_path, "digits", method, loss, seed, simulated_hits(rng, rate, 0.0))
                _times(folder, 2000.0 + 100 * seed + (50 if loss == "ms" else 0), 30.0)
                ids[(method, loss, seed)] = tracking.track_run(folder, settings)
    files = TableFiles.under(str(tmp_path / "results"))
    tracking.track_table(settings, files.all(), write_table([tmp_path / "runs"], files, filled({"statistics": {"bootstrap_samples": 100}})["statistics"]))

    client = MlflowClient(tracking_uri=settings.uri)
    experiment = client.get_experiment_by_name("digits").experiment_id
    rows = {r.info.run_name: r for r in client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'row'")}
    for loss in ("ms", "contrastive"):
        row = rows[f"better/{loss}"]
        children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{row.info.run_id}'")
        assert {c.info.run_id for c in children} == {ids[("better", loss, s)] for s in range(2)}, loss
        # Its duration is its seeds' training: the first one's start to the last one's end (not the table job's instant).
        offset = 50 if loss == "ms" else 0
        assert row.info.start_time == (2000 + offset) * 1000 and row.info.end_time == (2100 + offset + 30) * 1000
    for old in ("old", 0), ("old", 2):
        assert "mlflow.parentRunId" not in client.get_run(ids[old]).data.tags, old
