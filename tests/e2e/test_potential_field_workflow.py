"""End to end: the Potential-Field loss through the real Snakemake workflow on a tiny config."""

import pandas as pd
import pytest
import yaml

from tests.conftest import small_config
from tests.helpers.workflow import snakemake


@pytest.mark.slow
def test_potential_field_runs_to_the_table(default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=3)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["tracking"] = {"enabled": False}
    # The baseline and a feature-space method that turns its synthetic embeddings into extra charges.
    config["methods"] = ["baseline", "iaa"]
    config["losses"] = ["potential_field"]
    config["method_params"] = {"iaa": {"warmup_epochs": 0}}
    config.setdefault("loss_params", {})["potential_field"] = {"proxies_per_class": 4}
    config["seeds"] = [0]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))

    snakemake(tmp_path, "results/table.csv", cores=4)

    table = pd.read_csv(tmp_path / "results" / "table.csv")
    assert set(zip(table.method, table.loss)) == {("baseline", "potential_field"), ("iaa", "potential_field")}
    assert table["recall@1_mean"].min() > 30  # in %: far above chance (20 %) after one short epoch
    record = yaml.safe_load((tmp_path / "results" / "runs" / "digits" / "iaa" / "potential_field" / "seed0" / "run.yaml").read_text())
    assert record["params"]["loss_params"]["proxies_per_class"] == 4

    # Symmetrical Synthesis needs mined negative pairs: the config is rejected before any job runs.
    config["methods"] = ["symm"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "results/table.csv", check=False, cores=4)
    assert result.returncode != 0 and "method 'symm' does not work with loss 'potential_field'" in result.stdout + result.stderr
