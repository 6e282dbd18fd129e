import json

import numpy as np
import pandas as pd
import pytest

from dmlsynth.table import write_table


def write_metrics(root, dataset, method, loss, seed, **values):
    path = root / dataset / method / loss / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**values, "queries": 10, "eval_seconds": 0.1}))
    return path


def test_table_aggregates_over_seeds_with_deltas(tmp_path):
    files = [
        write_metrics(tmp_path, "digits", "baseline", "ms", 0, **{"recall@1": 0.5, "map@r": 0.2}),
        write_metrics(tmp_path, "digits", "baseline", "ms", 1, **{"recall@1": 0.7, "map@r": 0.4}),
        write_metrics(tmp_path, "digits", "iaa", "ms", 0, **{"recall@1": 0.8, "map@r": 0.3}),
        write_metrics(tmp_path, "digits", "iaa", "ms", 1, **{"recall@1": 0.9, "map@r": 0.3}),
        write_metrics(tmp_path, "digits", "iaa", "triplet", 0, **{"recall@1": 0.1, "map@r": 0.1}),
    ]
    out = tmp_path / "out"
    write_table(files, out / "table.csv", out / "metrics.json", out / "figures" / "r1.png")
    table = pd.read_csv(out / "table.csv").set_index(["method", "loss"])
    assert list(table.columns[:4]) == ["dataset", "seeds", "recall@1_mean", "recall@1_std"]
    assert table.loc[("baseline", "ms"), "seeds"] == 2
    assert table.loc[("baseline", "ms"), "recall@1_mean"] == pytest.approx(0.6)
    assert table.loc[("baseline", "ms"), "recall@1_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1), abs=1e-6)
    assert table.loc[("iaa", "ms"), "recall@1_delta"] == pytest.approx(0.25)
    assert table.loc[("iaa", "ms"), "map@r_delta"] == pytest.approx(0.0)
    assert table.loc[("iaa", "triplet"), "recall@1_std"] == 0.0
    assert np.isnan(table.loc[("iaa", "triplet"), "recall@1_delta"])  # no baseline for triplet
    assert "queries_mean" not in table.columns
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["table"]["digits"]["iaa"]["ms"]["recall@1_mean"] == pytest.approx(0.85)
    assert payload["runs"]["digits"]["baseline"]["ms"]["seed1"]["map@r"] == pytest.approx(0.4)
    assert len(payload["runs"]["digits"]["iaa"]) == 2
    assert (out / "figures" / "r1.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_metrics_files_are_reported(tmp_path):
    stray = tmp_path / "metrics.json"
    stray.write_text("{}")
    with pytest.raises(ValueError, match="is not a run's metrics file"):
        write_table([stray], tmp_path / "t.csv", tmp_path / "m.json", tmp_path / "f.png")
    broken = write_metrics(tmp_path, "d", "m", "l", 0)
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="re-run its evaluation job"):
        write_table([broken], tmp_path / "t.csv", tmp_path / "m.json", tmp_path / "f.png")
    assert not (tmp_path / "t.csv").exists()
