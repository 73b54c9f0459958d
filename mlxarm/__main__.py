"""Command line: ``python -m mlxarm run script.py [args...]`` (or ``run -m module [args...]``, as
``python -m`` does) runs an MLX program on mlxarm; ``python -m mlxarm info`` prints the device and
backend in use."""
from __future__ import annotations

import argparse
import os
import runpy
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mlxarm",
        description="mlxarm: MLX's Python API as a lazy tensor framework over numpy.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run an unmodified MLX script (import mlx.core as mx ...) on mlxarm",
        description="Install the mlx alias (see mlxarm.alias), then run SCRIPT as __main__ with "
                    "sys.argv = [SCRIPT, ARGS...]; with -m, run the module as python -m runs it "
                    "(e.g. run -m mlx_lm generate --model DIR).")
    run.add_argument("--override", action="store_true",
                     help="use mlxarm even when a real MLX is importable "
                          "(same as MLXARM_OVERRIDE_MLX=1)")
    run.add_argument("-m", dest="module", action="store_true",
                     help="SCRIPT names a module to run as __main__ (like python -m)")
    run.add_argument("script", help="path of the Python script to run (a module name with -m)")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")

    commands.add_parser("info", help="print the default device and backend information")
    return parser


def _run(script: str, args: list, override: bool, module: bool = False) -> None:
    from . import alias

    try:
        alias.install(override=override)
    except RuntimeError as refusal:
        sys.exit(f"python -m mlxarm run: {refusal}")
    if module:
        # As `python -m module` does: the current directory comes first on the import path.
        sys.argv = [script, *args]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(script, run_name="__main__", alter_sys=True)
        return
    sys.argv = [script, *args]
    # As `python script.py` does: the script's directory comes first on the import path.
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")


def _info() -> None:
    import numpy as np

    from . import __version__
    from . import core as mx

    print(f"mlxarm {__version__} (numpy {np.__version__}, Python {sys.version.split()[0]})")
    for key, value in mx.device_info().items():
        print(f"{key}: {value}")


def main(argv=None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    if options.command == "run":
        if not options.module and not os.path.isfile(options.script):
            parser.error(f"no such script: {options.script}")
        _run(options.script, options.args, options.override, options.module)
    elif options.command == "info":
        _info()
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
