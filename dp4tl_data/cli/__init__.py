"""The `dp4tl` command line: a thin layer, one module per command, loaded on first use.

Library errors become one-line click errors at this boundary (a traceback only with --debug).
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from .._version import __version__
from ..errors import Dp4tlError, missing_extra

# command name -> "module:attribute"; a later issue adds its command here, nothing else
COMMANDS: dict[str, str] = {
    "combine": "dp4tl_data.cli.combine:combine",
    "demo": "dp4tl_data.cli.demo:demo",
    "features": "dp4tl_data.cli.features:features",
    "index": "dp4tl_data.cli.index:index",
    "inspect": "dp4tl_data.cli.inspect:inspect",
    "prune": "dp4tl_data.cli.prune:prune",
    "train-surrogate": "dp4tl_data.cli.train_surrogate:train_surrogate",
    "cluster": "dp4tl_data.cli.laion:cluster",
    "assign": "dp4tl_data.cli.laion:assign",
    "shards": "dp4tl_data.cli.laion:shards",
    "import": "dp4tl_data.cli.laion:import_",
    "export": "dp4tl_data.cli.laion:export",
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when run (keeps `dp4tl --help` fast)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (Dp4tlError, OSError, ValueError, ImportError) as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            if isinstance(exc, ImportError) and not isinstance(exc, Dp4tlError):
                raise click.ClickException(f"{type(exc).__name__}: {missing_extra(exc.name or str(exc))}") from None
            raise click.ClickException(_one_line(exc)) from None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dp4tl")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: int) -> None:
    """dp4tl: prune pretraining source data for a target task, and inspect keep-lists.

    \b
    Typical flow:
      dp4tl index SOURCE -o source.idx
      dp4tl prune lm --source source.idx --target TARGET --model surrogate.pt --ratio 0.5 -o keep.json
      dp4tl inspect keep.json
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
