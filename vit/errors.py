"""Bad input and what it becomes: the project's error class, the value checks every reader shares, the error exit.

A user mistake or a bad file raises `VitError` with a message that names the path or the flag and
what is wrong. Every command (`train.py`, `finetune.py`, `python -m vit.<tool>`) runs its main() in
`run_cli`, which turns that error into one line on stderr and exit 1, and Ctrl-C into one line and
exit 130: no traceback reaches a user for a mistake of theirs. This file imports nothing of the
package, so a tool that only reads files gets its error handling without the training stack.
(vit/model.py checks its config on its own: it stands alone, importing only torch.)
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class VitError(ValueError):
    """The project's one error class: a bad file, folder, download or argument, with a clear message."""


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
    """Runs an entry point's main(); a VitError (a user mistake or a bad file) becomes a message and exit 1,
    Ctrl-C one line saying what was kept and exit 130 (128 + SIGINT, as a shell reports it)."""
    try:
        main()
    except VitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"\n{e}" if str(e) else "\ninterrupted", file=sys.stderr)
        sys.exit(130)
