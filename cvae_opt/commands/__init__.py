"""The command-line tools, one module each (`cvae-opt COMMAND`, `python -m cvae_opt.COMMAND`).

Commands parse arguments, call library modules (`cvae_opt.api`, `workers`, `storage`, ...) and print;
they never import each other (what several share is in `common`), and no library module imports them.
The top-level modules of the same names (`cvae_opt/run.py`, ...) only forward `python -m cvae_opt.run`.
"""
