"""Run the whole study: execute the numbered notebooks in order with papermill."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from emojidiff.config import Config, ConfigError, load_config, save_resolved
from emojidiff.layout import RunLayout
from emojidiff.runlock import RunLocked, run_lock

# the runner needs only paths and the config: importing it loads no torch (the notebooks' kernels do)
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parents[1]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # terminal colour codes in kernel tracebacks


def strip_ansi(text: str) -> str:
    """The text without terminal colour and cursor codes."""
    return _ANSI.sub("", text)


class NotebookFailed(RuntimeError):
    """A notebook raised; the executed copy is kept for inspection."""


@dataclass
class Step:
    name: str  # e.g. "01_data_fusion"
    source: Path  # the committed notebook
    output: Path  # the executed copy
    stamp: Path  # inputs' digest of the last successful execution


def find_notebooks(notebooks_dir: Path) -> list[Path]:
    """The numbered notebooks NN_name.ipynb, in order."""
    found = sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    return found


def _sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(PACKAGE_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def code_digest() -> str:
    """A digest of the package's code and data: a change to lib/ redoes every step."""
    files = [p for p in PACKAGE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return _sha256_files(files)


def step_digest(notebook: Path, cfg: Config, code: str, previous: str) -> str:
    """What a step depends on: its notebook, the resolved config, the code and the step before it."""
    h = hashlib.sha256()
    for part in (notebook.read_bytes(), cfg.canonical_json(), code.encode(), previous.encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def plan(cfg: Config, out_dir: Path, notebooks_dir: Path) -> list[Step]:
    layout = RunLayout(out_dir)
    return [Step(nb.stem, nb, layout.notebooks / nb.name, layout.root / ".stamps" / f"{nb.stem}.json")
            for nb in find_notebooks(notebooks_dir)]


def _is_current(step: Step, digest: str) -> bool:
    if not (step.output.is_file() and step.stamp.is_file()):
        return False
    try:
        return json.loads(step.stamp.read_text()).get("digest") == digest
    except (OSError, json.JSONDecodeError):
        return False


def _execute(step: Step, params_path: Path, out_dir: Path, progress: bool) -> None:
    import papermill as pm

    step.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(step.source), str(step.output),
            parameters={"params_path": str(params_path), "out_dir": str(out_dir)},
            cwd=str(step.source.parent), progress_bar=progress, kernel_name="python3",
        )
    except pm.PapermillExecutionError as e:
        raise NotebookFailed(strip_ansi(
            f"{step.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
            f"{''.join(e.traceback[-3:]) if e.traceback else ''}\n"
            f"The executed notebook is kept for inspection: {step.output}"
        )) from None


def run_study(params_path: str | Path, out_dir: str | Path | None = None, force: bool = False,
              only: list[str] | None = None, notebooks_dir: str | Path | None = None,
              progress: bool = True, log=print) -> list[dict]:
    """Execute every numbered notebook whose inputs changed; return one record per step."""
    params_path = Path(params_path).resolve()
    cfg = load_config(params_path)  # fails before any work on a bad profile
    out_dir = RunLayout.for_config(cfg, out_dir or None, base=REPO_DIR / "outputs").root.resolve()
    steps = plan(cfg, out_dir, Path(notebooks_dir or REPO_DIR / "notebooks"))
    only = only or cfg.notebooks or None  # --only, else the profile's own list (params/transition.yaml: 08)
    if only:
        unknown = [o for o in only if not any(s.name.startswith(o) for s in steps)]
        if unknown:
            raise ValueError(f"--only names no notebook: {', '.join(unknown)} (have: "
                             f"{', '.join(s.name for s in steps)})")
    with run_lock(out_dir, "the study run (emojidiff run)"):  # its notebooks' kernels inherit the lock
        return _run_steps(cfg, params_path, out_dir, steps, force, only, progress, log)


def _run_steps(cfg: Config, params_path: Path, out_dir: Path, steps: list[Step], force: bool, only, progress: bool,
               log) -> list[dict]:
    save_resolved(cfg, out_dir)
    code, previous, records = code_digest(), "", []
    log(f"emojidiff run: profile {cfg.name!r} from {params_path} -> {out_dir}")
    for i, step in enumerate(steps, 1):
        digest = previous = step_digest(step.source, cfg, code, previous)
        selected = not only or any(step.name.startswith(o) for o in only)
        if not selected or (not force and _is_current(step, digest)):
            log(f"[{i}/{len(steps)}] {step.name}: {'up to date' if selected else 'not selected'}, skipped")
            records.append({"step": step.name, "status": "skipped", "seconds": 0.0})
            continue
        log(f"[{i}/{len(steps)}] {step.name}: running ...")
        start = time.perf_counter()
        step.stamp.unlink(missing_ok=True)
        _execute(step, params_path, out_dir, progress)
        seconds = time.perf_counter() - start
        step.stamp.parent.mkdir(parents=True, exist_ok=True)
        step.stamp.write_text(json.dumps({"digest": digest, "seconds": round(seconds, 1)}))
        log(f"[{i}/{len(steps)}] {step.name}: done in {seconds:.1f} s -> {step.output}")
        records.append({"step": step.name, "status": "ran", "seconds": seconds})
    total = sum(r["seconds"] for r in records)
    log(f"emojidiff run: finished in {total:.1f} s; outputs in {out_dir}")
    (out_dir / "run_log.json").write_text(json.dumps(records, indent=1))
    return records


def cli_configure(parser) -> None:
    parser.add_argument("--params", default=str(REPO_DIR / "params" / "cpu.yaml"),
                        help="study profile (default: params/cpu.yaml)")
    parser.add_argument("--out", default=None, help="output folder (default: outputs/<profile name>)")
    parser.add_argument("--force", action="store_true", help="redo every step, even if its inputs are unchanged")
    parser.add_argument("--only", nargs="+", default=None, metavar="NN",
                        help="run only the notebooks whose names start with these prefixes, e.g. 01 02")
    parser.add_argument("--no-progress", action="store_true", help="hide papermill's per-cell progress bar")


def cli_main(args) -> int:
    try:
        run_study(args.params, args.out, force=args.force, only=args.only, progress=not args.no_progress)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"emojidiff run: error: {e}", file=sys.stderr)
        return 2
    except (NotebookFailed, RunLocked) as e:
        print(f"emojidiff run: {e}", file=sys.stderr)
        return 1
    return 0
