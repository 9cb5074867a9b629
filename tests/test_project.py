"""Project hygiene: environments agree, notebooks are committed clean and parameterised, ruff is clean."""

import ast
import re
import shutil
import subprocess
import sys
import tomllib

import nbformat
import pytest
import yaml


def _normalise(req: str) -> str:
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + spec.replace(" ", "")


def test_environment_yml_agrees_with_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = {_normalise(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    env = yaml.safe_load((repo / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_normalise(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "torch==2.14.1" in wanted and "torchvision==0.29.1" in wanted


def _notebooks(repo):
    found = sorted((repo / "notebooks").glob("*.ipynb"))
    assert found, "no notebooks committed"
    return found


def test_notebooks_are_committed_without_outputs(repo):
    for path in _notebooks(repo):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs, f"{path.name} has outputs"
                assert cell.execution_count is None, f"{path.name} has execution counts"


def test_notebooks_are_numbered_and_open_with_a_typed_parameters_cell(repo):
    for path in _notebooks(repo):
        assert re.match(r"^\d\d_[a-z0-9_]+\.ipynb$", path.name), path.name
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert "parameters" in first.metadata.get("tags", []), f"{path.name}: first code cell not tagged"
        names = []
        for line in first.source.strip().splitlines():
            # one typed name per line with a short trailing comment
            assert re.match(r"^\w+: [\w\[\], |.]+ = .+  # \S", line), f"{path.name}: {line!r}"
            node = ast.parse(line).body[0]
            assert isinstance(node, ast.AnnAssign)
            names.append(node.target.id)
        assert names[:2] == ["params_path", "out_dir"], path.name
        assert '"../params/cpu.yaml"' in first.source and '"../outputs/cpu"' in first.source


def test_ruff_is_clean(repo):
    ruff = shutil.which("ruff", path=str(repo / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_runs_the_readme_test_command(repo):
    readme = (repo / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    ci = [line for line in (repo / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test"


def test_console_script_offers_every_stage(repo):
    from pathlib import Path

    from emojidiff.cli import SUBCOMMANDS

    assert set(SUBCOMMANDS) >= {"run", "data", "train", "sample", "evaluate"}
    exe = shutil.which("emojidiff", path=str(Path(sys.executable).parent)) or "emojidiff"
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in SUBCOMMANDS:
        assert command in proc.stdout
        sub = subprocess.run([exe, command, "--help"], capture_output=True, text=True)
        takes = "train_dir" if command == "posthoc-ema" else "--params"  # a tool on a trained folder, not a stage
        assert sub.returncode == 0 and takes in sub.stdout, f"emojidiff {command} --help: {sub.stderr[-500:]}"
    bad = subprocess.run([exe, "trian"], capture_output=True, text=True)
    assert bad.returncode != 0 and "invalid choice: 'trian'" in bad.stderr


def _normaliser(repo):
    import importlib.util

    spec = importlib.util.spec_from_file_location("normalise_notebooks", repo / "scripts" / "normalise_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_carry_the_metadata_jupyterlab_writes(repo):
    # fails until `.venv/bin/python scripts/normalise_notebooks.py` has been run on the committed notebooks
    norm = _normaliser(repo)
    for path in _notebooks(repo):
        found = norm.problems(nbformat.read(path, as_version=4))
        assert not found, f"{path.name}: {found}; run .venv/bin/python scripts/normalise_notebooks.py"


def test_normalise_notebooks_script_strips_outputs_and_sets_metadata(repo, tmp_path):
    norm = _normaliser(repo)
    nb = nbformat.read(_notebooks(repo)[0], as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs, code.execution_count = [nbformat.v4.new_output("stream", text="hi")], 3
    code.metadata["execution"] = {"iopub.status.idle": "2026-01-01"}
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    assert len(norm.problems(nb)) == 4
    assert norm.main(["--check", str(path)]) == 1
    assert norm.main([str(path)]) == 0
    fixed = nbformat.read(path, as_version=4)
    assert norm.problems(fixed) == [] and fixed.metadata["language_info"]["version"].startswith("3.")
    assert fixed.metadata["kernelspec"]["display_name"] == "Python 3 (ipykernel)"
    assert [c.source for c in fixed.cells] == [c.source for c in nb.cells]  # content untouched
    assert norm.main(["--check", str(path)]) == 0  # idempotent


_STAGES = {"data": 1, "model": 2, "training": 3, "evaluation": 4, "study": 5}  # config, layout, images...: 0
_ENTRY_POINTS = {"emojidiff", "emojidiff.cli", "emojidiff.runner"}  # may import any stage


def _stage(module: str) -> int:
    if module in _ENTRY_POINTS:
        return 6
    parts = module.split(".")
    return _STAGES.get(parts[1], 0) if len(parts) > 1 else 0


def _first_party_imports(path, package_dir) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every emojidiff import in one file, `__main__` blocks left out."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
            for n in ast.walk(node)}
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from emojidiff.training import distributed` imports the module emojidiff.training.distributed
            names = [f"{node.module}.{a.name}" if (package_dir.parent / f"{node.module}.{a.name}".replace(".", "/")
                                                   ).with_suffix(".py").is_file() else node.module
                     for a in node.names]
        else:
            continue
        found += [(n, node.lineno, id(node) in top) for n in names if n.split(".")[0] == "emojidiff"]
    return found


def _import_graph(package_dir):
    """module -> [(imported module, line, at module level)] for every module of the package."""
    graph = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = _first_party_imports(path, package_dir)
    return graph


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected knot found by depth-first search (empty when the graph is acyclic)."""
    state, stack, found = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                found.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_imports_point_down_the_stages_and_make_no_cycle(repo):
    graph = _import_graph(repo / "lib" / "emojidiff")
    assert {"emojidiff.data.dataset", "emojidiff.evaluation.sampling", "emojidiff.study.memorisation"} <= set(graph)
    upward = [f"{m} (line {line}) imports {t}" for m, imports in graph.items() for t, line, _ in imports
              if t in graph and _stage(t) > _stage(m)]
    assert not upward, "imports must point down data <- model <- training <- evaluation <- study:\n" + \
        "\n".join(upward)
    cycles = _cycles({m: {t for t, _, top in imports if top and t in graph and t != m}
                      for m, imports in graph.items()})
    assert not cycles, "module-level import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_import_check_sees_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "emojidiff"
    for rel, text in {"__init__.py": "", "layout.py": "from emojidiff.study import tracing\n",
                      "data/__init__.py": "", "data/a.py": "import emojidiff.data.b\n",
                      "data/b.py": "from emojidiff.data import a\n", "study/__init__.py": "",
                      "study/tracing.py": "def f():\n    from emojidiff.data.a import x\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = _import_graph(pkg)
    assert graph["emojidiff.layout"] == [("emojidiff.study.tracing", 1, True)]
    assert graph["emojidiff.study.tracing"] == [("emojidiff.data.a", 2, False)]
    assert _stage("emojidiff.study.tracing") > _stage("emojidiff.layout")  # flagged as upward
    edges = {m: {t for t, _, top in imports if top} for m, imports in graph.items()}
    assert _cycles(edges) == [["emojidiff.data.a", "emojidiff.data.b", "emojidiff.data.a"]]
