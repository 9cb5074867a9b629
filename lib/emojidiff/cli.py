"""The `emojidiff` command: one subcommand per stage, each implemented by its module."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module exposing cli_configure(parser) and cli_main(args) -> int
SUBCOMMANDS = {
    "run": "emojidiff.runner",
    "data": "emojidiff.dataset",
    "train": "emojidiff.train",
    "sample": "emojidiff.sampling",
    "evaluate": "emojidiff.evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emojidiff", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        module.cli_configure(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._module.cli_main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
