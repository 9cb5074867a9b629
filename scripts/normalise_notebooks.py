"""Give every committed notebook the metadata JupyterLab writes on open, with outputs stripped.

JupyterLab rewrites `kernelspec` and `language_info` when it opens a notebook, so a notebook committed with less
is marked modified as soon as it is opened and saving it makes a git diff. Run this (with the project's Python, whose
version goes into `language_info`) after editing notebooks:

    .venv/bin/python scripts/normalise_notebooks.py            # rewrite notebooks/*.ipynb where needed
    .venv/bin/python scripts/normalise_notebooks.py --check    # list what would change; exit 1 if anything would
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# what ipykernel reports in kernel_info (ipykernel.ipkernel.IPythonKernel.language_info), version aside
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
}
RUN_CELL_METADATA = ("execution", "papermill")  # written by a run, not by the author


def language_info(version: str | None = None) -> dict:
    """The language_info of this Python's ipykernel."""
    return {**LANGUAGE_INFO, "version": version or ".".join(map(str, sys.version_info[:3]))}


def normalised(nb: nbformat.NotebookNode, version: str | None = None) -> nbformat.NotebookNode:
    """A copy of nb with full kernel metadata, no outputs, no execution counts, no run metadata."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("papermill", None)
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = language_info(version)
    for cell in nb.cells:
        for key in RUN_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """What differs from a normalised notebook (any Python 3 patch version is accepted)."""
    found = []
    if nb.metadata.get("kernelspec") != KERNELSPEC:
        found.append(f"kernelspec is {nb.metadata.get('kernelspec')}, want {KERNELSPEC}")
    info = dict(nb.metadata.get("language_info", {}))
    version = str(info.pop("version", ""))
    if info != LANGUAGE_INFO or not re.fullmatch(r"3\.\d+\.\d+", version):
        found.append(f"language_info is {nb.metadata.get('language_info')}, want {language_info()}")
    if "papermill" in nb.metadata:
        found.append("papermill metadata")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None):
            found.append(f"cell {i} has outputs or an execution count")
        if any(key in cell.metadata for key in RUN_CELL_METADATA):
            found.append(f"cell {i} has run metadata")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="only list notebooks that need normalising")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((REPO / "notebooks").glob("*.ipynb"))
    dirty = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        new = normalised(nb)
        if nbformat.writes(new).rstrip("\n") + "\n" == path.read_text():  # nbformat.write ends with a newline
            continue
        dirty += 1
        if args.check:
            print(f"{path}: {'; '.join(problems(nb)) or 'formatting'}")
        else:
            nbformat.write(new, path)  # the same JSON layout as Jupyter's own save
            print(f"normalised {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
