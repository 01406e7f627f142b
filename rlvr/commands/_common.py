"""Helpers shared by subcommands (argparse only at import time)."""

from __future__ import annotations

import argparse
import sys


def add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", default=default, help=f"YAML config file (default: {default})")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override config fields, e.g. train.steps=10")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def print_table(rows: list[tuple], headers: tuple) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))
