"""The `emojidiff` command: one subcommand per stage, each implemented by its module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from emojidiff.config import ConfigError
from emojidiff.runlock import RunLocked
from emojidiff.runner import NotebookFailed

# subcommand -> module exposing cli_configure(parser) and cli_main(args) -> int
SUBCOMMANDS = {
    "run": "emojidiff.runner",
    "data": "emojidiff.data.dataset",
    "train": "emojidiff.training.train",
    "sample": "emojidiff.evaluation.sampling",
    "evaluate": "emojidiff.evaluation.evaluate",
    "posthoc-ema": "emojidiff.training.posthoc_ema",
}
DEBUG_ENV = "EMOJIDIFF_DEBUG"  # =1: show tracebacks of user errors, like --debug


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; when argv names a subcommand, only its module is imported (`emojidiff run` loads no torch)."""
    parser = argparse.ArgumentParser(prog="emojidiff", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of errors; goes before the subcommand (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    chosen = next((a for a in (sys.argv[1:] if argv is None else argv) if a in SUBCOMMANDS), None)
    for name, module_name in SUBCOMMANDS.items():
        if chosen not in (None, name):
            sub.add_parser(name)  # not chosen: a name to accept, its module left unimported
            continue
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.cli_configure(p)
        p.set_defaults(_module=module)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a bad profile, input or folder state, not a bug: one line, no traceback."""
    # imported here, only once something failed: they live in modules that load torch
    from emojidiff.data.emoji_sources import EmojiSourceError
    from emojidiff.training.checkpoint import CheckpointError
    from emojidiff.training.train import TrainingDiverged

    return (ConfigError, CheckpointError, TrainingDiverged, RunLocked, NotebookFailed, EmojiSourceError,
            FileNotFoundError, NotImplementedError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    if args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return int(args._module.cli_main(args) or 0)
    show = warnings.formatwarning
    warnings.formatwarning = lambda message, *_a, **_k: f"emojidiff {args.command}: warning: {message}\n"
    try:
        return int(args._module.cli_main(args) or 0)
    except user_errors() as e:
        kind = "error" if isinstance(e, (ConfigError, FileNotFoundError)) else type(e).__name__
        print(f"emojidiff {args.command}: {kind}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        print(f"emojidiff {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = show


if __name__ == "__main__":
    sys.exit(main())
