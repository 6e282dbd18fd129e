"""A job run by hand (`dmlsynth <rule> --config ...`) in another checkout's folder is refused, as the workflow
refuses to run with another checkout's package: its record would name that folder's git commit for other code."""

import pytest

from dmlsynth import provenance
from dmlsynth.cli import main
from tests.conftest import ROOT

# A job that stops at once after the check (digits has no resized copy): how far it got shows in its message.
COMMAND = ["cache-images", "--config", str(ROOT / "params.yaml"), "--dataset", "digits"]


@pytest.fixture(autouse=True)
def by_hand(monkeypatch):
    monkeypatch.delenv(provenance.PROJECT_DIR_VARIABLE, raising=False)  # no workflow around it


def test_a_job_run_in_another_checkout_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "src" / "dmlsynth").mkdir(parents=True)
    (tmp_path / "src" / "dmlsynth" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert main(COMMAND) == 2
    error = capsys.readouterr().err
    assert f"the job run in {tmp_path.resolve()} imports dmlsynth from {provenance.PACKAGE_DIR}, another checkout" in error
    assert f"PYTHONPATH={tmp_path.resolve() / 'src'}" in error and "cache_short_side" not in error


@pytest.mark.parametrize("folder", ["own checkout", "folder without a package"])
def test_a_job_run_in_its_own_checkout_or_a_plain_folder_runs(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(provenance.PACKAGE_DIR.parent.parent if folder == "own checkout" else tmp_path)
    assert main(COMMAND) == 2
    error = capsys.readouterr().err
    assert "cache_short_side is 0" in error and "another checkout" not in error
