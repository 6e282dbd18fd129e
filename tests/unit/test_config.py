import copy

import pytest
import yaml

from dmlsynth import config as cfg
from dmlsynth import provenance, registry
from tests.conftest import ROOT


def test_default_params_are_valid(repo_root):
    config = cfg.load(repo_root / "params.yaml")
    assert config["datasets"] == ["digits"]
    assert set(config["methods"]) <= set(registry.METHODS)
    assert "baseline" in config["methods"]
    # Paired statistics over seeds: issue #13 asked for 5 where the time budget allows; #22's budget (the quick
    # start within 5 minutes on 2 cores, benchmarks/bench_embedded_default.py) allows 3, as config/paper.yaml.
    assert len(config["seeds"]) >= 3


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("methods", ["baseline", "nonsense"], "at methods[1]: 'nonsense' is not allowed; allowed values: "),
        ("losses", ["arcface"], "at losses[0]: 'arcface' is not allowed; allowed values: angular, contrastive"),
        ("datasets", ["mnist"], "at datasets[0]: 'mnist' is not allowed; allowed values: "),
        ("seeds", [-1], "at seeds[0]"),
        ("seeds", [], "at seeds"),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(default_params, key, value, expected):
    config = copy.deepcopy(default_params)
    config[key] = value
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert expected in str(info.value)


def test_unknown_key_lists_the_allowed_keys(default_params):
    config = copy.deepcopy(default_params)
    config["training"]["epochz"] = 3
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    message = str(info.value)
    assert "at training" in message and "'epochz' was unexpected" in message and "allowed keys: batch_sampling, batch_size" in message


def test_wrong_type_is_reported(default_params):
    config = copy.deepcopy(default_params)
    config["training"]["lr"] = "fast"
    with pytest.raises(cfg.ConfigError, match=r"at training.lr: 'fast' is not of type 'number'"):
        cfg.validate(config)


def test_all_problems_are_reported_at_once(default_params):
    config = copy.deepcopy(default_params)
    config["methods"] = ["nope"]
    config["losses"] = ["nope"]
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert "at methods[0]" in str(info.value) and "at losses[0]" in str(info.value)


def test_batch_must_be_composable_from_the_training_classes(default_params):
    config = copy.deepcopy(default_params)
    config["training"].update(batch_size=96, m_per_class=16)  # 6 classes needed, digits has 5
    with pytest.raises(cfg.ConfigError, match="needs 6 training classes in every batch, but 'digits' has 5: use batch_size <= 80"):
        cfg.validate(config)
    config["training"].update(batch_size=90, m_per_class=16)
    with pytest.raises(cfg.ConfigError, match="not a multiple of") as info:
        cfg.validate(config)
    assert "use e.g. batch_size 80" in str(info.value)
    # A batch that is not a multiple gets one message, not a contradictory second one (m_per_class 15 once said
    # "needs at least 5 training classes ... but 'digits' has 5").
    config["training"].update(batch_size=80, m_per_class=15)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert str(info.value).count("  - at ") == 1 and "use e.g. batch_size 75" in str(info.value)


def test_strings_from_the_command_line_are_read_as_the_schema_types(default_params):
    # snakemake --config seeds='[0]' training='{epochs: 5}' hands nested values over as strings.
    config = copy.deepcopy(default_params)
    config["seeds"] = ["0", "2"]
    config["training"] = {**config["training"], "epochs": "5", "lr": "1e-4", "batches_per_epoch": "null"}
    config["tracking"] = {"enabled": "false"}
    config["method_params"] = {"iaa": {"neighbor_correction": "false"}}
    valid = cfg.validate(config)
    assert valid["seeds"] == [0, 2] and valid["training"]["epochs"] == 5 and valid["training"]["lr"] == 1e-4
    assert valid["training"]["batches_per_epoch"] is None and valid["tracking"]["enabled"] is False
    assert valid["method_params"]["iaa"]["neighbor_correction"] is False
    # Strings where the schema wants strings stay strings; nonsense stays an error.
    config["paths"] = {**config["paths"], "data": "123"}
    config["training"]["epochs"] = "five"
    with pytest.raises(cfg.ConfigError, match="at training.epochs: 'five' is not of type 'integer'"):
        cfg.validate(config)
    config["training"]["epochs"] = "5"
    assert cfg.validate(config)["paths"]["data"] == "123"


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("datasets: [digits\nmethods: baseline: x")
    with pytest.raises(cfg.ConfigError, match="is not valid YAML"):
        cfg.load(bad)
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load(tmp_path / "absent.yaml")
    bad.write_text("- just\n- a list\n")
    with pytest.raises(cfg.ConfigError, match="expected a mapping"):
        cfg.load(bad)


def test_run_params_resolve_defaults_and_overrides(default_params):
    config = copy.deepcopy(default_params)
    config.setdefault("loss_params", {}).setdefault("multi_similarity", {})["beta"] = 40.0
    params = cfg.run_params(cfg.validate(config), "digits", "baseline", "multi_similarity", 1)
    assert params["loss_params"] == {"alpha": 2.0, "beta": 40.0, "base": 0.5, "miner_epsilon": 0.1}
    assert params["dataset_settings"]["backbone"] == "small_cnn"
    assert params["seed"] == 1
    other = cfg.run_params(cfg.validate(config), "digits", "baseline", "multi_similarity", 2)
    assert provenance.params_hash(params) != provenance.params_hash(other)


def test_incompatible_method_and_loss_is_rejected_unless_excluded(default_params):
    from dmlsynth.resolve import runs

    config = copy.deepcopy(default_params)
    config["methods"] = ["baseline", "symm"]
    config["losses"] = ["multi_similarity", "proxy_anchor"]
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert "method 'symm' does not work with loss 'proxy_anchor'" in str(info.value)
    assert "exclude: [{method: symm, loss: proxy_anchor}]" in str(info.value)
    config["exclude"] = [{"method": "symm", "loss": "proxy_anchor"}]
    matrix = {(r["method"], r["loss"]) for r in runs(cfg.validate(config))}
    assert matrix == {("baseline", "multi_similarity"), ("baseline", "proxy_anchor"), ("symm", "multi_similarity")}


def test_resized_copy_is_for_photos_and_not_smaller_than_the_evaluation_resize(default_params):
    config = dict(default_params, dataset_settings={"digits": {"cache_short_side": 64}})
    with pytest.raises(cfg.ConfigError, match="digits.*grayscale.*set it to 0"):
        cfg.validate(config)
    paper = cfg.load(ROOT / "config" / "paper.yaml")
    paper["dataset_settings"]["cub200"]["cache_short_side"] = 200
    with pytest.raises(cfg.ConfigError, match="cub200.cache_short_side: 200 is smaller than the 256 pixels"):
        cfg.validate(paper)
    paper["dataset_settings"]["cub200"]["cache_short_side"] = 0
    assert registry.dataset_settings(cfg.validate(paper), "cub200")["cache_short_side"] == 0
    assert registry.dataset_settings(cfg.validate(default_params), "cub200")["cache_short_side"] == 256


def test_a_generator_trained_here_is_refused_for_photos(default_params):
    config = copy.deepcopy(default_params)
    config["datasets"] = ["cub200"]
    config["generation"] = {"cub200": {"generator": "embedded"}}
    with pytest.raises(cfg.ConfigError, match="at generation.cub200.generator: the embedded generator makes small grayscale"):
        cfg.validate(config)


def test_fine_tuning_is_for_stable_diffusion_and_excludes_a_given_lora(default_params):
    config = copy.deepcopy(default_params)
    config["generation"] = {"digits": {"fine_tuning": {"method": "lora"}}}  # digits default to the embedded generator
    with pytest.raises(cfg.ConfigError, match="at generation.digits.fine_tuning.method: 'lora' fine-tunes Stable Diffusion"):
        cfg.validate(config)
    config["generation"] = {"digits": {"generator": "stable-diffusion", "lora": "x.safetensors", "fine_tuning": {"method": "both"}}}
    with pytest.raises(cfg.ConfigError, match="at generation.digits.lora: a LoRA file is given"):
        cfg.validate(config)
    config["generation"]["digits"]["fine_tuning"] = {"method": "textual_inversion", "steps": 10, "rank": 2}
    assert cfg.validate(config)["generation"]["digits"]["fine_tuning"]["steps"] == 10
    config["generation"]["digits"]["fine_tuning"] = {"method": "dreambooth"}
    with pytest.raises(cfg.ConfigError, match="dreambooth"):
        cfg.validate(config)


@pytest.mark.parametrize(
    "loss, given, expected",
    [
        ("n_pairs", {"pairs": "all"}, "at loss_params.n_pairs.pairs: 'all' is not allowed; allowed values: one_per_class, units"),
        ("angular", {"pairs": "one_per_class"}, "at loss_params.angular.pairs: 'one_per_class' is not allowed; allowed values: every_pair, units"),
        ("angular", {"normalize": "often"}, "at loss_params.angular.normalize: 'often' is not of type 'boolean'"),
        ("angular", {"l2_reg": -1}, "at loss_params.angular.l2_reg: -1 is less than the minimum of 0"),
    ],
)
def test_pair_forms_of_n_pairs_and_angular_are_checked(default_params, loss, given, expected):
    config = copy.deepcopy(default_params)
    config.setdefault("loss_params", {})[loss] = given
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert expected in str(info.value)
    # The same keys under one method (method_loss_params takes loss_params's keys).
    config = copy.deepcopy(default_params)
    config["method_loss_params"] = {"symm": {loss: given}}
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    assert expected.replace("loss_params.", "method_loss_params.symm.") in str(info.value)


def test_symms_unit_forms_are_its_runs_and_its_controls_loss_params(default_params):
    config = cfg.validate(dict(copy.deepcopy(default_params), methods=["baseline", "symm"], losses=["n_pairs", "angular"]))
    for loss, label in [("n_pairs", "baseline+normalize=false+pairs=units"), ("angular", "baseline+l2_reg=0.002+normalize=false+pairs=units")]:
        assert registry.control_label(config, "symm", loss) == label
        own = cfg.run_params(config, "digits", "symm", loss, 0)
        control = cfg.run_params(config, "digits", label, loss, 0)
        assert own["control"] == label and control["method"] == "baseline" and own["loss_params"] == control["loss_params"]
        assert cfg.run_params(config, "digits", "baseline", loss, 0)["loss_params"]["pairs"] == registry.PAIR_FORMS[loss][0]
    # The normalised option of angular: the control follows.
    config["method_loss_params"] = {"symm": {"angular": {"normalize": True, "l2_reg": 0.0}}}
    assert registry.control_label(cfg.validate(config), "symm", "angular") == "baseline+pairs=units"


def test_an_exclude_that_removes_every_run_is_rejected(default_params):
    config = copy.deepcopy(default_params)
    config.update(methods=["baseline", "symm"], losses=["multi_similarity"])
    config["exclude"] = [{"method": "baseline", "loss": "multi_similarity"}]
    cfg.validate(config)  # symm x multi_similarity is left (and its control trains with it)
    config["exclude"].append({"method": "symm", "loss": "multi_similarity"})
    with pytest.raises(cfg.ConfigError, match=r"at exclude: it removes every method x loss pair .* no run is left"):
        cfg.validate(config)


def test_more_images_per_class_than_the_smallest_training_class_has_is_rejected(default_params):
    """Digits' smallest training class has 177 images (two of 16 each would repeat images within every batch)."""
    from dmlsynth.data.split import TRAINING_CLASS_SIZES

    smallest = min(TRAINING_CLASS_SIZES["digits"])
    config = copy.deepcopy(default_params)
    config["training"].update(batch_size=smallest * 5, m_per_class=smallest)
    cfg.validate(config)
    config["training"].update(batch_size=(smallest + 1) * 5, m_per_class=smallest + 1)
    with pytest.raises(cfg.ConfigError) as info:
        cfg.validate(config)
    message = str(info.value)
    assert f"at training.m_per_class: {smallest + 1} images of a class in every batch" in message
    assert f"the smallest training class of 'digits' has {smallest}" in message and f"m_per_class <= {smallest}" in message
    # With validation classes the smallest class left for training counts (digits 0-2: 178, 182, 177).
    config.setdefault("dataset_settings", {}).setdefault("digits", {})["validation_classes"] = 2
    config["training"].update(batch_size=178 * 3, m_per_class=178)
    with pytest.raises(cfg.ConfigError, match="'digits' after its validation classes has 177"):
        cfg.validate(config)


def test_a_layered_config_merges_mappings_key_by_key_and_replaces_the_rest_as_snakemake_does(tmp_path):
    overlay = tmp_path / "more.yaml"
    overlay.write_text("seeds: [3]\ntraining: {epochs: 2}\n")
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    config = cfg.load_layered(ROOT / "params.yaml", overlay)
    assert config["seeds"] == [3]  # a list is replaced, not extended
    assert config["training"]["epochs"] == 2 and config["training"]["lr"] == base["training"]["lr"]  # a mapping is merged
    assert config["methods"] == base["methods"]
    overlay.write_text("training: {epochs: 0}\n")
    with pytest.raises(cfg.ConfigError, match="epochs"):
        cfg.load_layered(ROOT / "params.yaml", overlay)
