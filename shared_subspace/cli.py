"""Command line: the kit's experiments headless, with progress bars and results written to disk.

    shared-subspace cache [--rebuild]        build (or rebuild) every cached result
    shared-subspace <command> --help         one command per experiment (added by each module)

Each module registers its command with @command(name, help); `run.add_arguments(parser)` and
`run.builds_cache = True` may be set on the function before or after decorating it.
"""
from __future__ import annotations

import argparse
import sys

COMMANDS: dict[str, tuple[str, callable]] = {}  # name -> (help, run)


def command(name: str, help: str):
    """Decorator: register `run(args)` under `name`."""
    def wrap(run):
        COMMANDS[name] = (help, run)
        return run
    return wrap


def _register_all() -> None:
    # Import the modules that define commands; each import registers its own.
    import importlib
    for module in ("zoo", "streaming", "lora", "models", "tasks", "continual", "share", "elastic", "dimension"):
        try:
            importlib.import_module(f"shared_subspace.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"shared_subspace.{module}":
                raise


@command("cache", "build every cached result (models, zoos, sweeps); --rebuild recomputes them")
def _cache(args) -> int:
    for name, (_, run) in COMMANDS.items():
        if name != "cache" and getattr(run, "builds_cache", False):
            print(f"== {name}")
            run(argparse.Namespace(rebuild=args.rebuild, fast=args.fast))
    return 0


_cache.add_arguments = lambda p: (p.add_argument("--rebuild", action="store_true"),
                                  p.add_argument("--fast", action="store_true"))


def main(argv=None) -> int:
    _register_all()
    parser = argparse.ArgumentParser(prog="shared-subspace", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, run) in sorted(COMMANDS.items()):
        getattr(run, "add_arguments", lambda p: None)(sub.add_parser(name, help=help_))
    args = parser.parse_args(argv)
    return COMMANDS[args.command][1](args) or 0


if __name__ == "__main__":  # `python -m shared_subspace.cli`: use the importable module's registry
    from shared_subspace.cli import main as _main
    sys.exit(_main())
