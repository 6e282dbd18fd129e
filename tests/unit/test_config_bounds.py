"""NaN, infinities and absurd sizes are config errors with a message, caught before any job runs."""

import subprocess
import sys

import pytest
import yaml

from dmlsynth import config as cfg


@pytest.mark.parametrize(
    "block, key, value",
    [
        ("training", "lr", float("nan")),
        ("training", "lr", float("inf")),
        ("training", "weight_decay", float("-inf")),
        ("loss_params", "multi_similarity", {"alpha": float("nan")}),  # a loss's own params
        ("statistics", "confidence", float("nan")),  # between bounds that NaN passes (every comparison is false)
    ],
)
def test_a_non_finite_number_anywhere_is_a_config_error(default_params, block, key, value):
    config = {**default_params, block: {**(default_params.get(block) or {}), key: value}}
    with pytest.raises(cfg.ConfigError, match=rf"at {block}\.{key}.*not a finite number"):
        cfg.validate(config)


def test_nan_from_the_command_line_is_refused_too(default_params):
    config = {**default_params, "training": {**default_params["training"], "lr": "nan"}}  # --config training.lr=nan
    with pytest.raises(cfg.ConfigError, match=r"at training\.lr: nan is not a finite number"):
        cfg.validate(config)


@pytest.mark.parametrize(
    "path, value",
    [
        (("dataset_settings", "digits", "embedding_dim"), 100_000_000),
        (("dataset_settings", "digits", "image_size"), 100_000),
        (("training", "batch_size"), 10**7),
        (("generation", "digits", "embedded", "text_width"), 8 * 10**6),
        (("evaluation", "batch_size"), 10**9),
    ],
)
def test_absurd_sizes_are_config_errors(default_params, path, value):
    config = yaml.safe_load(yaml.safe_dump(default_params))
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(cfg.ConfigError, match=rf"at {'.'.join(path)}: {value} is greater than the maximum.*typo"):
        cfg.validate(config)


def test_the_largest_sizes_a_paper_uses_pass(default_params):
    config = yaml.safe_load(yaml.safe_dump(default_params))
    config.setdefault("dataset_settings", {})["digits"] = {"embedding_dim": 2048, "image_size": 1024}
    cfg.validate(config)


def test_check_config_says_so_in_one_message(default_params, tmp_path):
    config = yaml.safe_load(yaml.safe_dump(default_params))
    config["training"]["lr"] = float("nan")
    config.setdefault("dataset_settings", {})["digits"] = {"embedding_dim": 100_000_000}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert ".nan" in path.read_text()
    result = subprocess.run([sys.executable, "-m", "dmlsynth", "check-config", "--config", str(path)], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "at training.lr: nan is not a finite number" in result.stderr
    assert "at dataset_settings.digits.embedding_dim: 100000000 is greater than the maximum of 8192" in result.stderr
