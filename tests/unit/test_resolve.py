"""The resolved tree (dmlsynth.resolve): the config filled once, the run matrix, controls and class counts."""

from __future__ import annotations

import copy

import yaml

from dmlsynth import config as cfg
from dmlsynth import jobs, registry, resolve
from tests.conftest import ROOT


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_tree_holds_the_filled_config_the_matrix_and_each_pair_s_control():
    given = params()
    tree = resolve.resolve(given)
    assert tree["config"] == cfg.validate(given)
    # IAA trains with its published beta: its control is a baseline of its own, in the matrix beside plain baseline.
    assert tree["pairs"]["iaa/multi_similarity"] == {
        "loss_params": {**tree["config"]["loss_params"]["multi_similarity"], "beta": 40.0},
        "control": "baseline+beta=40",
    }
    assert tree["pairs"]["baseline/multi_similarity"]["control"] == "baseline"
    methods = [run["method"] for run in tree["runs"]]
    assert methods.count("baseline+beta=40") == len(given["seeds"]) and methods[-1] == "baseline+beta=40"
    assert len(tree["runs"]) == (len(given["methods"]) + 1) * len(given["seeds"])
    assert {run["seed"] for run in tree["runs"]} == set(given["seeds"])
    assert tree["comparison_groups"] == resolve.comparison_groups(tree["config"]) == [("digits", "multi_similarity")]
    assert tree["datasets"]["digits"] == {"training_classes": 5, "validation_classes": 0}
    assert tree["image_sets"] == ["blender", "plain"]


def test_excluded_pairs_leave_the_matrix_and_validation_classes_leave_the_training_classes():
    given = params()
    given["methods"], given["losses"] = ["baseline", "symm"], ["multi_similarity", "n_pairs"]
    given["exclude"] = [{"method": "symm", "loss": "multi_similarity"}]
    given["dataset_settings"] = {"digits": {"validation_classes": 2}}
    given["training"]["batch_size"] = 48  # 3 training classes x m_per_class
    tree = resolve.resolve(given)
    assert "symm/multi_similarity" not in tree["pairs"] and "symm/n_pairs" in tree["pairs"]
    assert {(r["method"], r["loss"]) for r in tree["runs"]} == {
        ("baseline", "multi_similarity"), ("baseline", "n_pairs"), ("symm", "n_pairs"),
        (registry.control_label(tree["config"], "symm", "n_pairs"), "n_pairs"),
    }  # fmt: skip
    assert tree["datasets"]["digits"] == {"training_classes": 3, "validation_classes": 2}


def test_jobs_are_built_from_the_tree():
    given = params()
    built = jobs.Jobs(copy.deepcopy(given))
    tree = resolve.resolve(given)
    assert built.config == tree["config"] and built.runs == tree["runs"]
    # The comparison a training makes stale is the tree's forest-plot group.
    train = built.train("digits", "iaa", "multi_similarity", 0)
    assert any("forest_digits_multi_similarity" in path for path in train.stale)
