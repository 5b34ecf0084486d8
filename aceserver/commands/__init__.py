"""The `aceserver` sub-commands, one module each (`cli.COMMANDS` lists them in help order).

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; it
parses arguments, calls the library and prints, nothing more. Library imports happen inside
``run`` so that `aceserver --help` starts without numba, FastAPI or the fitting code.
"""
