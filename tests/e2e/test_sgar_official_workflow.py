"""End to end: SGAR as its official code runs it (config/protocols/sgar.yaml's variant and recipe, on digits)
is trained by the workflow with its own control, Proxy-Anchor through the same head, and paired with it."""

import pandas as pd
import pytest
import yaml

from dmlsynth import registry
from tests.conftest import small_config
from tests.helpers.workflow import snakemake


@pytest.mark.slow
def test_the_workflow_trains_sgar_official_and_its_head_control_and_pairs_them(default_params, tmp_path):
    config = small_config(default_params, tmp_path / "data", tmp_path / "results", epochs=1, batches_per_epoch=None)
    config["paths"] = {"data": "data", "results": "results", "logs": "logs"}
    config["tracking"] = {"enabled": False}
    config["methods"] = ["baseline", "sgar"]  # as config/protocols/sgar.yaml
    config["losses"] = ["proxy_anchor"]
    config["seeds"] = [0]
    config["method_params"] = {"sgar": {"variant": "official"}}
    config["training"].update(batch_sampling="random", grad_clip_value=10)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))

    snakemake(tmp_path, "results/table.csv")

    control = registry.control_label(config, "sgar", "proxy_anchor")
    assert control == "baseline+projection_head=true"
    table = pd.read_csv(tmp_path / "results" / "table.csv", keep_default_na=False).set_index(["method", "loss"])
    assert table.loc[("sgar", "proxy_anchor"), "control"] == control
    assert (control, "proxy_anchor") in table.index and ("baseline", "proxy_anchor") in table.index
    records = {
        r["params"]["label"]: r["params"]
        for r in (yaml.safe_load(p.read_text()) for p in (tmp_path / "results" / "runs").rglob("run.yaml"))
    }
    assert records["sgar"]["method_params"]["variant"] == "official"
    assert records["sgar"]["loss_params"] == records[control]["loss_params"]
    assert records[control]["loss_params"]["projection_head"] and not records["baseline"]["loss_params"]["projection_head"]
    assert records["sgar"]["training"] == records[control]["training"]
    assert records[control]["training"]["batch_sampling"] == "random" and records[control]["training"]["grad_clip_value"] == 10
    # The synthesis is on: sgar's numbers are not its control's.
    assert any(float(table.loc[("sgar", "proxy_anchor"), c]) != 0.0 for c in table.columns if c.endswith("_delta"))
