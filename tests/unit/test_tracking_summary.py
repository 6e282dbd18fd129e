"""MLflow as its UI expects: one row run per table row, the parent of its seeds' runs, with the row's numbers."""

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from dmlsynth import tracking
from dmlsynth.layout import TableFiles
from dmlsynth.table import write_table
from tests.helpers.runs import make_run, simulated_hits


def test_every_table_row_is_a_run_with_its_seeds_as_children(tmp_path):
    settings = tracking.settings({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    rng = np.random.default_rng(0)
    folders = [
        make_run(tmp_path, "digits", method, "ms", seed, simulated_hits(rng, rate, 0.0))
        for seed in range(2)
        for method, rate in (("baseline", 0.6), ("better", 0.75))
    ]
    for folder in folders:
        tracking.track_run(folder, settings)  # as the training jobs do
    files = TableFiles.under(str(tmp_path / "results"))
    table = write_table([tmp_path / "runs"], files, {"bootstrap_samples": 200})
    table_run = tracking.track_table(settings, files.all(), table)

    client = MlflowClient(tracking_uri=settings.uri)
    experiment = client.get_experiment_by_name("digits").experiment_id
    rows = {r.info.run_name: r for r in client.search_runs([experiment], filter_string="tags.`dmlsynth.kind` = 'row'")}
    assert set(rows) == {"baseline/ms", "better/ms"}
    better = rows["better/ms"]
    expected = table.set_index("method").loc["better"]
    assert better.data.metrics["recall_at_1_delta"] == pytest.approx(expected["recall@1_delta"])
    assert better.data.metrics["recall_at_1_mean"] == pytest.approx(expected["recall@1_mean"])
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
