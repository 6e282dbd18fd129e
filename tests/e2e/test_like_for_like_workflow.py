"""End to end: the workflow compares every method with a control that differs only in its synthesis.

A tiny run of the paper protocol's settings (``batches_per_epoch: null``: one pass over the training
images per epoch), without `baseline` in the config: the workflow trains the controls itself —
plain baseline, IAA's with its beta = 40, Symmetrical Synthesis's with the unit-softmax N-pair. (The
generated-image methods' budgets and controls, on the same protocol: test_workflow.py.)
"""

import pandas as pd
import pytest
import yaml

from dmlsynth import registry
from tests.conftest import small_config
from tests.helpers.workflow import snakemake


@pytest.mark.slow
def test_every_row_has_a_control_with_the_same_budget_and_loss_params(default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=None)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["tracking"] = {"enabled": False}
    config["methods"] = ["iaa", "symm"]
    config["losses"] = ["multi_similarity", "n_pairs"]
    config["seeds"] = [0]
    # Symmetrical Synthesis switched off must give exactly its control's numbers.
    config["method_params"] = {"symm": {"synthesis": False}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))

    snakemake(tmp_path, "results/table.csv")

    table = pd.read_csv(tmp_path / "results" / "table.csv", keep_default_na=False).set_index(["method", "loss"])
    iaa_control = registry.control_label(config, "iaa", "multi_similarity")
    symm_control = registry.control_label(config, "symm", "n_pairs")
    assert iaa_control == "baseline+beta=40"
    assert table.loc[("iaa", "multi_similarity"), "control"] == iaa_control
    assert table.loc[("symm", "n_pairs"), "control"] == symm_control != "baseline"
    assert table.loc[("iaa", "n_pairs"), "control"] == "baseline"
    assert table.loc[("baseline", "multi_similarity"), "control"] == "n/a"  # trained although not configured
    records = {
        (r["params"]["label"], r["params"]["loss"]): r
        for r in (yaml.safe_load(p.read_text()) for p in (tmp_path / "results" / "runs").rglob("run.yaml"))
    }
    assert records[(iaa_control, "multi_similarity")]["params"]["loss_params"]["beta"] == 40.0
    assert records[("baseline", "multi_similarity")]["params"]["loss_params"]["beta"] == 50.0
    # One optimisation budget per dataset x loss, whatever the method.
    for loss in config["losses"]:
        budgets = {label: r["budget"]["optimisation_steps"] for (label, l), r in records.items() if l == loss}
        assert len(set(budgets.values())) == 1, budgets
        assert (table.xs(loss, level="loss")["optimisation_steps"].astype(int) == next(iter(budgets.values()))).all()
    # Switched off, symm is its control: every metric's difference is exactly 0.
    symm = table.loc[("symm", "n_pairs")]
    for column in [c for c in table.columns if c.endswith("_delta")]:
        assert float(symm[column]) == 0.0, column
