"""The papermill runner: order, parameters, caching by digest, --force, failures kept for inspection."""

import json
import subprocess
import sys

import nbformat
import pytest

from emojidiff.runner import NotebookFailed, run_study


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('params_path: str = "x.yaml"  # profile\nout_dir: str = "out"  # outputs')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def study(tmp_path, repo):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    # Each step appends its name to a log in out_dir, so we see what ran and in which order.
    for name in ("01_first", "02_second"):
        _notebook(nbs / f"{name}.ipynb",
                  f"import pathlib\np = pathlib.Path(out_dir) / 'ran.txt'\n"
                  f"p.write_text((p.read_text() if p.exists() else '') + '{name}\\n')\n"
                  f"assert pathlib.Path(params_path).is_file()")
    params = tmp_path / "p.yaml"
    params.write_text((repo / "params/smoke.yaml").read_text())
    return nbs, params, tmp_path / "out"


def _ran(out):
    return (out / "ran.txt").read_text().split()


def test_runs_in_order_then_skips_unchanged(study):
    nbs, params, out = study
    records = run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["ran", "ran"]
    assert _ran(out) == ["01_first", "02_second"]
    assert (out / "notebooks" / "01_first.ipynb").is_file()
    assert (out / "config.yaml").is_file()
    executed = nbformat.read(out / "notebooks" / "02_second.ipynb", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert str(params.resolve()) in injected[0].source

    # Nothing changed: nothing runs.
    records = run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["skipped", "skipped"]
    assert _ran(out) == ["01_first", "02_second"]

    # A changed profile redoes every step; a changed second notebook redoes only that step.
    params.write_text(params.read_text().replace("seed: 0", "seed: 1"))
    run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    assert _ran(out)[2:] == ["01_first", "02_second"]
    second = nbformat.read(nbs / "02_second.ipynb", as_version=4)
    second.cells[1].source += "\n# edited"
    nbformat.write(second, nbs / "02_second.ipynb")
    run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    assert _ran(out)[4:] == ["02_second"]

    # --force redoes all.
    run_study(params, out, notebooks_dir=nbs, force=True, progress=False, log=lambda *_: None)
    assert _ran(out)[5:] == ["01_first", "02_second"]


def test_failure_stops_and_keeps_the_executed_notebook(study):
    nbs, params, out = study
    _notebook(nbs / "01_first.ipynb", "raise RuntimeError('the cell broke')")
    with pytest.raises(NotebookFailed, match="the cell broke") as info:
        run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    assert "01_first.ipynb" in str(info.value)
    assert (out / "notebooks" / "01_first.ipynb").is_file()
    assert not (out / "ran.txt").exists()  # the second step never ran
    assert not (out / ".stamps" / "01_first.json").exists()  # a failed step is redone next time


def test_cli_refuses_a_bad_profile_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: lots\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "emojidiff.cli", "run", "--params", str(bad), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "train.batch_size" in proc.stderr and "bad.yaml" in proc.stderr
    assert not out.exists()
    proc = subprocess.run([sys.executable, "-m", "emojidiff.cli", "run", "--params", str(tmp_path / "none.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "profile not found" in proc.stderr


def test_only_names_must_exist(study):
    nbs, params, out = study
    with pytest.raises(ValueError, match="--only names no notebook: 09"):
        run_study(params, out, notebooks_dir=nbs, only=["09"], progress=False, log=lambda *_: None)
    records = run_study(params, out, notebooks_dir=nbs, only=["02"], progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["skipped", "ran"]
    assert json.loads((out / "run_log.json").read_text())[1]["step"] == "02_second"
