"""Bad input and what it becomes: the project's error class, the value checks every reader shares, the error exit.

A user mistake, a bad folder or a failed download raises `VitError` with a message that names the
path or the flag and what is wrong; a file whose bytes are wrong raises `vit.formats.FormatError`
(and a checkpoint that is no ViT, its subclass `vit.weights.CheckpointError`), kept in those files so
that each can be copied without this one. `USER_ERRORS` is the two together. Every command
(`train.py`, `finetune.py`, `python -m vit.<tool>`) runs its main() in `run_cli`, which turns them
into one line on stderr and exit 1, and Ctrl-C into one line and exit 130: no traceback reaches a
user for a mistake of theirs. (vit/model.py checks its config with ValueError: it stands alone.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .formats import FormatError


class VitError(ValueError):
    """The project's error class: a bad folder, download, run folder or argument, with a clear message."""


USER_ERRORS = (VitError, FormatError)  # what a user can cause, and so reads as one line, not a traceback


def is_int(value: object) -> bool:
    """An int, but not a bool (True is an int in Python; a file or a config saying `true` is not a number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An int or a float, but not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (an error naming the value otherwise, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_cli(main: Callable[[], object]) -> None:
    """Runs an entry point's main(); a user error (USER_ERRORS: a mistake or a bad file) becomes a message and exit 1,
    Ctrl-C one line saying what was kept and exit 130 (128 + SIGINT, as a shell reports it)."""
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"\n{e}" if str(e) else "\ninterrupted", file=sys.stderr)
        sys.exit(130)
