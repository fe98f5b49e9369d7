"""``defectlite recipes``: list the shipped recipes or print one."""

from __future__ import annotations

import argparse

from defectlite.cli.options import add_command


def register(sub: argparse._SubParsersAction, parents: list) -> None:
    p = add_command(
        sub,
        "recipes",
        parents,
        help="list shipped recipes, or print one as YAML",
        description="Without NAME: list recipes with their descriptions. With NAME: print its YAML.",
    )
    p.add_argument("name", nargs="?", help="recipe to print")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from defectlite.train.config import dump_recipe, list_recipes, load_recipe

    if args.name:
        print(dump_recipe(load_recipe(args.name)), end="")
        return 0
    for name in list_recipes():
        desc = " ".join(load_recipe(name).description.split())
        print(f"{name:<28}{desc[:110]}")
    return 0
