"""Prompts from attributes, the generation config block and the quality report's measures."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dmlsynth import config as cfg
from dmlsynth.data.manifest import read_manifest
from dmlsynth.generation.prompts import build_prompts, digit_measurements, read_prompts, write_prompts
from dmlsynth.generation.quality import mean_pairwise_distance, quality_rows, sample_grid
from dmlsynth.generation.settings import generation_settings, image_sets, set_recipe
from dmlsynth.pipeline import stage_outputs
from dmlsynth.config import filled


def test_digit_measurements_follow_thickness_slant_and_size():
    image = np.zeros((8, 8), np.uint8)
    image[1:7, 3] = 255
    thick = image.copy()
    thick[1:7, 4] = 255
    lean_right = np.zeros((8, 8), np.uint8)
    for row, col in zip(range(1, 7), [6, 5, 5, 4, 3, 2]):  # top to the right
        lean_right[row, col] = 255
    small = np.zeros((8, 8), np.uint8)
    small[3:5, 3] = 255
    m = digit_measurements(np.stack([image, thick, lean_right, small]))
    assert m.thickness[1] > m.thickness[0]
    assert m.slant[2] > 0.3 and abs(m.slant[0]) < 1e-9
    assert m["size"][3] < m["size"][0]


def test_cub_and_cars_prompts(tmp_path):
    root = tmp_path / "raw" / "CUB_200_2011"
    (root / "attributes").mkdir(parents=True)
    (root / "attributes.txt").write_text("1 has_wing_color::blue\n2 has_bill_shape::cone\n3 has_size::small_(5_-_9_in)\n")
    scores = np.array([[90.0, 10.0, 50.0], [0.0, 80.0, 20.0]])
    np.savetxt(root / "attributes" / "class_attribute_labels_continuous.txt", scores)
    train = pd.DataFrame({"label": [1, 2], "class_name": ["001.Black_footed_Albatross", "002.Laysan_Albatross"], "split": "train"})
    doc = build_prompts("cub200", train, [tmp_path / "raw"])
    first = doc["classes"][0]
    assert first["plain"] == "a photo of a Black footed Albatross, a bird"
    assert first["prompts"][1].endswith("blue wing color") and first["prompts"][2].endswith("small size")
    assert doc["classes"][1]["prompts"][1].endswith("cone bill shape")
    # The table written by the cub200 preparation gives the same prompts.
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    pd.DataFrame({"class_id": [1, 2], "class_name": ["Black footed Albatross", "Laysan Albatross"],
                  "has_wing_color::blue": [90.0, 0.0], "has_bill_shape::cone": [10.0, 80.0],
                  "has_size::small_(5_-_9_in)": [50.0, 20.0]}).to_csv(prepared / "class_attributes.csv", index=False)
    assert build_prompts("cub200", train, [prepared])["classes"] == doc["classes"]
    with pytest.raises(ValueError, match="class_attribute_labels_continuous"):
        build_prompts("cub200", train, [tmp_path / "elsewhere"])
    cars = build_prompts("cars196", pd.DataFrame({"label": [1], "class_name": ["AM General Hummer SUV 2000"], "split": "train"}))
    assert any("side view" in p for p in cars["classes"][0]["prompts"])
    path = write_prompts(cars, tmp_path / "prompts.yaml")
    assert read_prompts(path, [1])[1]["plain"] == "a photo of a AM General Hummer SUV 2000, a car"
    path.write_text("classes:\n  - {label: 1, class_name: x, plain: y, prompts: []}\n")
    with pytest.raises(ValueError, match="non-empty list"):
        read_prompts(path)


def test_generation_config_block(default_params):
    config = cfg.validate({**default_params, "methods": ["baseline", "blender", "sd_plain"]})
    assert image_sets(config) == ["blender", "plain"]
    settings = generation_settings(config, "digits")
    assert settings["generator"] == "embedded" and settings["images_per_class"] == 80
    assert set_recipe("blender", settings)["operators"] == {"intersection": 0.5, "union": 0.5}
    assert set_recipe("plain", settings) == {"operators": {"conjunction": 1.0}, "prompts_per_image": 1, "prompts_per_condition": 1, "plain": True}
    assert stage_outputs(config)["generate"] == [
        "data/digits/prompts.yaml", "data/digits/generator",
        *[f"data/digits/generated/{step}/class{i}.csv" for i in range(5) for step in ("parts", "filtered")],
        "data/digits/generated/blender/manifest.csv", "data/digits/generated/blender/images",
        "data/digits/generated/plain/manifest.csv", "data/digits/generated/plain/images",
        "results/generation.csv", "results/figures/generated_digits.png",
    ]
    assert stage_outputs({**config, "methods": ["baseline"]})["generate"] == []
    bad = {**default_params, "generation": {"digits": {"generator": "dall-e"}}}
    with pytest.raises(cfg.ConfigError, match="embedded, stable-diffusion"):
        cfg.validate(bad)
    with pytest.raises(cfg.ConfigError, match="steps"):
        cfg.validate({**default_params, "generation": {"digits": {"steps": 0}}})


def test_quality_measures(digits_manifest, tmp_path):
    frame = read_manifest(digits_manifest)
    train = frame[frame.split == "train"].reset_index(drop=True)
    held = train.groupby("label").head(20)
    wrong = held.assign(label=(held.label + 1) % 5)  # every image claims the next class
    repeated = held.groupby("label").head(1).loc[lambda f: f.index.repeat(5)].reset_index(drop=True)
    rows = quality_rows("digits", train, {"real": held.assign(operator="union"), "wrong": wrong.assign(operator="union"),
                                          "repeated": repeated.assign(operator="union")}, "L", 8, "embedded")
    by = rows.set_index("image_set")
    assert by.loc["real", "fidelity"] > 0.95 and by.loc["wrong", "fidelity"] < 0.1
    assert by.loc["repeated", "diversity"] == pytest.approx(0.0, abs=1e-6)
    assert 0.8 < by.loc["real", "diversity"] < 1.2 and 0.9 < by.loc["real", "real_accuracy"] <= 1
    assert by.loc["real", "chance"] == pytest.approx(0.2)
    # Every set above is drawn "with the union operator": no intersection images to compare against.
    assert rows["union_intersection_pvalue"].isna().all()
    halves = held.assign(operator=np.where(np.arange(len(held)) % 2 == 0, "union", "intersection"))
    rows = quality_rows("digits", train, {"blender": halves, "plain": held.assign(operator="conjunction")}, "L", 8, "embedded")
    compared = rows[rows.operator.isin(["union", "intersection"])]
    assert len(compared) == 2 and compared["union_intersection_pvalue"].nunique() == 1
    assert compared["union_intersection_pvalue"].iloc[0] > 0.05  # alternate real images: no operator effect
    assert rows.loc[rows.operator.isin(["all", "cfg"]), "union_intersection_distance"].isna().all()
    out = sample_grid(train, {"union": _planned(held, "union")}, ["plain", "union"], tmp_path / "grid.png", "L")
    assert Image.open(out).size[0] > 100
    assert mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]])) == 5.0


def test_union_intersection_separation_against_its_definition():
    from dmlsynth.generation.quality import operator_separation

    rng = np.random.default_rng(0)
    x = rng.normal(size=(14, 3))
    y = np.array([0] * 8 + [1] * 6)
    is_union = np.array([1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 0], dtype=bool)
    distance, separation = [], []
    for c in (0, 1):
        u, i = x[(y == c) & is_union], x[(y == c) & ~is_union]
        d = lambda a, b: np.mean([np.linalg.norm(p - q) for p in a for q in b])
        within = lambda a: np.mean([np.linalg.norm(a[j] - a[k]) for j in range(len(a)) for k in range(len(a)) if j != k])
        distance.append(d(u, i))
        separation.append((2 * d(u, i) - within(u) - within(i)) / (within(u) + within(i)))
    result = operator_separation(x, y, is_union, permutations=49)
    assert result["distance"] == pytest.approx(np.mean(distance))
    assert result["separation"] == pytest.approx(np.mean(separation))
    assert 0 < result["pvalue"] <= 1 and result["pvalue"] * 50 == pytest.approx(round(result["pvalue"] * 50))


def test_union_intersection_pvalue_tells_a_difference_from_seed_noise():
    from dmlsynth.generation.quality import operator_separation

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 40)
    is_union = np.tile(np.repeat([True, False], 20), 3)
    same = rng.normal(size=(120, 16))
    shifted = same + 0.6 * is_union[:, None]  # union images shifted along every feature
    alike, different = operator_separation(same, y, is_union), operator_separation(shifted, y, is_union)
    assert alike["pvalue"] > 0.05 and abs(alike["separation"]) < 0.05
    assert different["pvalue"] == pytest.approx(1 / 1000) and different["separation"] > 0.03
    assert different["distance"] > alike["distance"]
    # Too few images of one operator in every class: nothing to compare.
    assert np.isnan(operator_separation(same[:3], y[:3], np.array([True, False, False]))["pvalue"])


def test_cli_reports_generation_errors_without_traceback(tmp_path, capsys, default_params):
    from dmlsynth.cli import main
    from dmlsynth.data.split import training_class_count
    from dmlsynth.jobs import Jobs

    config = {**default_params, "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results"), "logs": str(tmp_path / "logs")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(config))
    job = Jobs(config).merge_generated("digits", "union")
    for part in job.inputs["parts"]:  # every class's filtered part holds plain images only
        Path(part).parent.mkdir(parents=True, exist_ok=True)
        Path(part).write_text("image_set,path,label,class_name,split,operator,prompts,seed,params_hash\nplain,images/0/0000.png,0,zero,train,conjunction,{},1,x\n")
    assert len(job.inputs["parts"]) == training_class_count(filled(config), "digits")
    assert main(["merge-generated", "--config", str(tmp_path / "params.yaml"), "--dataset", "digits", "--image-set", "union"]) == 2
    assert "no images of image set 'union'" in capsys.readouterr().err
    assert not Path(job.outputs["manifest"]).exists()


def test_report_goes_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from dmlsynth import tracking
    from dmlsynth.generation.quality import COLUMNS

    row = dict.fromkeys(COLUMNS, 1.0) | {"dataset": "digits", "image_set": "blender", "operator": "union", "generator": "embedded", "fidelity": 0.97}
    settings = tracking.settings(filled({"tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}}))
    tracking.track_generation(settings, pd.DataFrame([row]), {}, tmp_path / "generation.csv")
    tracking.track_generation(settings, pd.DataFrame([row | {"fidelity": 0.99}]), {}, tmp_path / "generation.csv")  # a re-run updates the same run
    client = MlflowClient(tracking_uri=settings.uri)
    runs = client.search_runs([client.get_experiment_by_name("generation").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["fidelity"] == 0.99
    assert runs[0].data.tags["image_set"] == "blender"
    # Artifacts go beside the local store, not into the working directory.
    assert client.get_experiment_by_name("generation").artifact_location == str(tmp_path / "mlruns" / "generation")


def test_a_hand_edited_prompts_file_is_kept_and_new_prompts_go_beside_it(tmp_path, caplog):
    from dmlsynth.generation.prompts import is_edited, update_prompts

    first = {"dataset": "d", "classes": [{"label": 1, "class_name": "a", "plain": "a photo of a", "prompts": ["a photo of a"]}]}
    second = {"dataset": "d", "classes": [{"label": 1, "class_name": "a", "plain": "a photo of a", "prompts": ["a photo of a", "red"]}]}
    path, rebuilt = tmp_path / "prompts.yaml", tmp_path / "prompts.rebuilt.yaml"
    assert update_prompts(first, path, rebuilt) and not is_edited(path)
    # Not edited: new prompts overwrite it.
    assert update_prompts(second, path, rebuilt) and read_prompts(path)[1]["prompts"] == ["a photo of a", "red"]
    assert not rebuilt.exists()
    # Edited by hand: kept, the new prompts go beside it, with a warning that says what to do.
    path.write_text(path.read_text().replace("- red", "- blue"))
    assert is_edited(path)
    assert not update_prompts(first, path, rebuilt)
    assert read_prompts(path)[1]["prompts"] == ["a photo of a", "blue"]
    assert read_prompts(rebuilt)[1]["prompts"] == ["a photo of a"]
    assert "edited by hand" in caplog.text and f"delete {path}" in caplog.text
    # An edit that broke the YAML is kept too (reading it says what is wrong).
    path.write_text("classes: [unclosed\n")
    assert not update_prompts(first, path, rebuilt) and path.read_text() == "classes: [unclosed\n"
    # A file written by hand (no digest) that equals the new prompts is simply rewritten.
    path.write_text(yaml.safe_dump(first))
    assert is_edited(path) and update_prompts(first, path, rebuilt) and not is_edited(path)


def _planned(frame, image_set, settings=None):
    """``frame``'s images as an image set's manifest: each with the operator and prompts generation plans for it."""
    import json

    from dmlsynth.generation.run import plan_image

    entries = {int(entry["label"]): entry for entry in build_prompts("digits", frame)["classes"]}
    recipe = set_recipe(image_set, settings or generation_settings(filled({}), "digits"))
    plans = [plan_image(entries[int(label)], recipe, seed) for seed, label in enumerate(frame["label"])]
    return frame.assign(
        operator=[plan["operator"] for plan in plans],
        prompts=[json.dumps({"prompts": plan["prompts"], "weights": plan["weights"]}) for plan in plans],
    )


def test_the_sample_grid_says_which_operator_and_prompts_made_each_image(digits_manifest, tmp_path, monkeypatch):
    import json

    from dmlsynth.generation import quality

    frame = read_manifest(digits_manifest)
    train = frame[frame.split == "train"].reset_index(drop=True)
    held = train.groupby("label").head(8).reset_index(drop=True)
    generated = {"blender": _planned(held, "blender"), "plain": _planned(held, "plain")}
    drawn = {}
    monkeypatch.setattr(quality, "save_figure", lambda fig, out, dpi: drawn.setdefault("figure", fig) and out)
    quality.sample_grid(train, generated, ["plain", "union", "blender"], tmp_path / "grid.png", "L", per_cell=3)
    axes = drawn["figure"].axes
    assert len(axes) == 5 * 3 * 3  # classes x (real, plain, blender) x images
    per_row = {r: axes[r * 9:(r + 1) * 9] for r in range(5)}
    for r, row in per_row.items():
        assert row[0].get_ylabel() == held[held.label == r].class_name.iloc[0]
        assert [ax.get_xlabel() for ax in row[:3]] == ["", "", ""]  # real images: nothing to say
        plain = [ax.get_xlabel() for ax in row[3:6]]
        assert plain == [f"CFG\na digit {held[held.label == r].class_name.iloc[0]}"] * 3  # the class prompt alone
        shown = generated["blender"][generated["blender"].label == r].head(3)
        for ax, (_, image) in zip(row[6:9], shown.iterrows()):
            lines = ax.get_xlabel().split("\n")
            assert lines[0] == {"union": "∪ union", "intersection": "∩ intersection"}[image.operator]
            recipe = json.loads(image.prompts)
            strongest = [max(zip(w, c))[1] for c, w in zip(recipe["prompts"], recipe["weights"])]
            assert len(lines) == 1 + len(strongest) == 4  # K = 3 conditions
            for line, prompt in zip(lines[1:], strongest):
                class_words = f"a digit {image.class_name}"  # the row names the class already
                rest = prompt[len(class_words):].lstrip(" ,") or prompt  # (the class prompt alone stays)
                assert line == rest or (line.endswith("…") and rest.startswith(line[:-1]) and len(line) <= quality.CAPTION_WIDTH < len(rest))
