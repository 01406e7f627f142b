"""Helpers shared by subcommands (argparse only at import time)."""

from __future__ import annotations

import argparse
import sys


def add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help=f"YAML config file (default: {default})")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config fields, e.g. train.steps=10")


def fail(message: str | BaseException) -> int:
    """Print one ``error:`` line (an exception's own message, never its repr) and return exit status 2."""
    if isinstance(message, BaseException):  # str(KeyError("x")) is "'x'": take the message itself
        from rlvr.errors import one_line

        message = one_line(message)
    print(f"error: {message}", file=sys.stderr)
    return 2
