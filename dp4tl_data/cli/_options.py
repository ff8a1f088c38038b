"""Options shared by several commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    """``--json``: print machine-readable JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def allow_foreign_option(f: F) -> F:
    """``--allow-foreign``: apply a keep-list made for another source."""
    return click.option(
        "--allow-foreign", is_flag=True, help="Apply a keep-list whose source fingerprint differs from this source."
    )(f)


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def echo_table(rows: list[tuple[str, Any]]) -> None:
    """Two aligned columns."""
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        click.echo(f"{k.ljust(width)}  {v}")
