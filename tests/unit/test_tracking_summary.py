"""The summary run of the results table carries the table's numbers."""

from mlflow.tracking import MlflowClient

from dmlsynth import tracking


def test_summary_run_carries_the_table_metrics(tmp_path):
    settings = tracking.settings({"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}})
    table = tmp_path / "table.csv"
    table.write_text("dataset,method\ndigits,iaa\n")
    metrics = {"digits/iaa/ms/recall@1_mean": 0.9, "digits/iaa/ms/recall@1_significant": 1.0, "digits/iaa/ms/recall@1_std": float("nan")}
    first = tracking.track_table(settings, [table], metrics)
    client = MlflowClient(tracking_uri=settings.uri)
    run = client.get_run(first)
    # n/a values are left out; '@' is spelled '_at_' (MLflow names allow no '@').
    assert run.data.metrics == {"digits/iaa/ms/recall_at_1_mean": 0.9, "digits/iaa/ms/recall_at_1_significant": 1.0}
    assert "table.csv" in {a.path for a in client.list_artifacts(first)}
    # A new table updates the same summary run.
    assert tracking.track_table(settings, [table], {**metrics, "digits/iaa/ms/recall@1_mean": 0.8}) == first
    assert client.get_run(first).data.metrics["digits/iaa/ms/recall_at_1_mean"] == 0.8
