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


# --- issue 17: what a change redoes, checked without executing notebooks ---


@pytest.fixture
def three_steps(tmp_path, repo, monkeypatch):
    """Three notebooks whose execution is only recorded (papermill is not run), and a profile."""
    from emojidiff import runner

    nbs = tmp_path / "nbs"
    nbs.mkdir()
    for name in ("01_data", "02_train", "03_eval"):
        _notebook(nbs / f"{name}.ipynb", f"print({name!r})")
    params = tmp_path / "p.yaml"
    params.write_text((repo / "params/smoke.yaml").read_text())
    ran = []

    def execute(step, params_path, out_dir, progress):
        ran.append(step.name)
        step.output.parent.mkdir(parents=True, exist_ok=True)
        step.output.write_text("{}")

    monkeypatch.setattr(runner, "_execute", execute)

    def run():
        n = len(ran)
        run_study(params, tmp_path / "out", notebooks_dir=nbs, progress=False, log=lambda *_: None)
        return ran[n:]

    return nbs, run


def _edit(notebook):
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].source += "\n# edited"
    nbformat.write(nb, notebook)


def test_editing_notebook_01_redoes_the_steps_after_it(three_steps):
    nbs, run = three_steps
    assert run() == ["01_data", "02_train", "03_eval"]
    assert run() == []
    _edit(nbs / "01_data.ipynb")  # new data: the training and evaluation built on it are stale
    assert run() == ["01_data", "02_train", "03_eval"]
    _edit(nbs / "02_train.ipynb")
    assert run() == ["02_train", "03_eval"]
    _edit(nbs / "03_eval.ipynb")
    assert run() == ["03_eval"]


def test_a_change_to_the_package_code_or_data_redoes_every_step(three_steps, tmp_path, monkeypatch):
    import shutil

    from emojidiff import runner

    pkg = tmp_path / "lib" / "emojidiff"  # a copy of the package to edit
    shutil.copytree(runner.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(runner, "PACKAGE_DIR", pkg)
    _, run = three_steps
    assert run() == ["01_data", "02_train", "03_eval"]
    assert run() == []
    before = runner.code_digest()
    with open(pkg / "ema.py", "a") as f:
        f.write("# a change to one module\n")
    assert runner.code_digest() != before
    assert run() == ["01_data", "02_train", "03_eval"]
    faces = pkg / "data" / "faces.json"
    faces.write_text(faces.read_text() + "\n")  # shipped data count too
    assert run() == ["01_data", "02_train", "03_eval"]
    assert run() == []


def test_a_failure_message_carries_no_terminal_colour_codes(study):
    nbs, params, out = study
    _notebook(nbs / "01_first.ipynb", "def f():\n    raise KeyError('broken key')\nf()")
    with pytest.raises(NotebookFailed) as info:
        run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    msg = str(info.value)
    assert "\x1b" not in msg and "KeyError: 'broken key'" in msg and "f()" in msg


def test_the_run_holds_the_folder_lock_its_notebooks_may_write_others_may_not(study):
    import os

    from emojidiff.runlock import RunLocked, holder

    nbs, params, out = study
    # A notebook that trains takes the run folder's lock too: inside `emojidiff run` it must pass.
    _notebook(nbs / "02_second.ipynb", "from emojidiff.runlock import run_lock, holder\n"
                                       "with run_lock(out_dir, 'training'):\n"
                                       "    open(out_dir + '/holder.txt', 'w').write(holder(out_dir))")
    run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    pid, _, task = (out / "holder.txt").read_text().partition(" ")
    assert int(pid) == os.getpid() and task.strip() == "the study run (emojidiff run)"  # the kernel passed
    blocker = subprocess.Popen([sys.executable, "-c", "import sys, time; from emojidiff.runlock import run_lock\n"
                                "with run_lock(sys.argv[1], 'training'): print('ok', flush=True); time.sleep(60)",
                                str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert blocker.stdout.readline().strip() == "ok" and holder(out) == f"{blocker.pid} training"
        with pytest.raises(RunLocked, match=rf"training is running elsewhere \(process {blocker.pid} "):
            run_study(params, out, notebooks_dir=nbs, force=True, progress=False, log=lambda *_: None)
    finally:
        blocker.kill()
        blocker.wait()


def test_importing_the_runner_loads_neither_torch_nor_the_rest_of_the_package():
    code = ("import sys, emojidiff.runner, emojidiff\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'pandas', 'matplotlib')"
            " or m.startswith(('emojidiff.data', 'emojidiff.model', 'emojidiff.training', 'emojidiff.evaluation',"
            " 'emojidiff.study')))\n"
            "print(heavy)\n"
            "emojidiff.generate  # a top-level name still works, imported on first use (the sampler needs torch)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.splitlines() == ["[]", "True"], out.stdout + out.stderr


def test_the_default_run_folder_is_the_repositorys_outputs_profile_name(monkeypatch, tmp_path):
    import emojidiff.runner as runner

    monkeypatch.setattr(runner, "_run_steps", lambda cfg, params, out_dir, *a: out_dir)
    monkeypatch.setattr(runner, "run_lock", lambda *a: __import__("contextlib").nullcontext())
    assert runner.run_study(runner.REPO_DIR / "params" / "smoke.yaml") == runner.REPO_DIR / "outputs" / "smoke"
    assert runner.run_study(runner.REPO_DIR / "params" / "smoke.yaml", tmp_path / "x") == (tmp_path / "x").resolve()


def test_a_profile_that_lists_its_notebooks_runs_only_those(study):
    nbs, params, out = study
    params.write_text(params.read_text().replace("notebooks: []", 'notebooks: ["02"]'))
    records = run_study(params, out, notebooks_dir=nbs, progress=False, log=lambda *_: None)
    assert [r["status"] for r in records] == ["skipped", "ran"]
    assert _ran(out) == ["02_second"]
    # --only still overrides the profile's list
    run_study(params, out, notebooks_dir=nbs, only=["01"], progress=False, log=lambda *_: None)
    assert _ran(out) == ["02_second", "01_first"]


def test_the_run_subcommand_loads_no_torch_the_others_their_module():
    code = ("import sys\nfrom emojidiff.cli import build_parser\n"
            "args = build_parser(['run', '--only', 'sample']).parse_args(['run', '--only', 'sample'])\n"
            "print(args._module.__name__, 'torch' in sys.modules)\n"
            "argv = ['--debug', 'sample', '--params', 'p']\n"
            "args = build_parser(argv).parse_args(argv)\n"
            "print(args._module.__name__, args.debug, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.splitlines() == ["emojidiff.runner False", "emojidiff.evaluation.sampling True True"], \
        out.stdout + out.stderr
