"""The ``lieprop`` command: ``lieprop serve``, ``lieprop info`` (and ``train``, ``evaluate``, ``predict``).

Each subcommand is one ``add_<name>(subparsers)`` function that registers its own parser (with ``--help``
examples) and sets ``func`` to the function that runs it; :data:`COMMANDS` lists them. To add a subcommand, write
its ``add_<name>`` next to the others (or in its own module) and append it to :data:`COMMANDS`; nothing else here
needs to change. Heavy imports (torch, FastAPI) happen inside the ``run_*`` functions, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import math
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lieprop
from lieprop.training.commands import add_evaluate, add_train

Subparsers = Any  # argparse._SubParsersAction, which argparse does not export


def _parser(sub: Subparsers, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, epilog="examples:\n" + examples,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# --------------------------------------------------------------------------------------------------
# lieprop serve


def add_serve(sub: Subparsers) -> None:
    p = _parser(sub, "serve", "run the REST prediction service (uvicorn) with the bundled or a given model", """\
  lieprop serve                                   # bundled model on 127.0.0.1:8000
  lieprop serve --host 0.0.0.0 --port 8080 --model runs/best/model.pt
  lieprop serve --max-batch-size 32 --max-wait-ms 2 --workers-embed 2
  LIEPROP_API_KEY=secret lieprop serve            # every flag is also an environment variable LIEPROP_<NAME>
  curl -s localhost:8000/v1/predict -H 'content-type: application/json' \\
       -d '{"molecules": [{"smiles": "CCO"}], "properties": ["homo", "lumo"]}'""")
    from lieprop.service.settings import Settings

    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = f"LIEPROP_{name.upper()}"
        help = f"{field.description} (env {env})"
        kind = _scalar_type(field.annotation)
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif typing.get_origin(field.annotation) is list:
            p.add_argument(flag, dest=name, nargs="+", default=None, metavar="VALUE", help=help)
        else:
            metavar = {int: "N", float: "X", Path: "PATH"}.get(kind, "TEXT")
            p.add_argument(flag, dest=name, type=kind, default=None, metavar=metavar, help=help)
    p.set_defaults(func=run_serve)


def _scalar_type(annotation: Any) -> Callable[[str], Any]:
    """int, float, bool, Path or str for a settings annotation (``X | None`` -> X, ``SecretStr`` -> str)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation if annotation in (int, float, bool, Path) else str


def run_serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from lieprop.inference import ModelNotFoundError, load_model
    from lieprop.model.bundle import BundleError
    from lieprop.service.logs import configure_logging
    from lieprop.service.settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"lieprop serve: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    try:
        load_model(settings.model)  # fail before binding the port, with the reason; the app reuses the cached load
    except (ModelNotFoundError, BundleError) as exc:
        print(f"lieprop serve: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from lieprop.service.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
                server_header=False, timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
                log_level=settings.log_level.lower())
    return 0


# --------------------------------------------------------------------------------------------------
# lieprop info


def add_info(sub: Subparsers) -> None:
    p = _parser(sub, "info", "print a model bundle's card: name, version, sha256, targets, training, test MAE", """\
  lieprop info                          # the bundled model
  lieprop info runs/default/model.pt
  lieprop info --json | jq .properties""")
    p.add_argument("bundle", nargs="?", default=None, help="bundle file (default: the bundled model)")
    p.add_argument("--json", action="store_true", help="print the card as JSON (as GET /v1/models)")
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    import json

    from lieprop.data.properties import BY_NAME
    from lieprop.inference import ModelNotFoundError, load_model, model_card
    from lieprop.model.bundle import BundleError

    try:
        bundle = load_model(args.bundle)
    except (ModelNotFoundError, BundleError) as exc:
        print(f"lieprop info: {exc}", file=sys.stderr)
        return 2
    card = model_card(bundle)
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    cfg = bundle.model.cfg
    print(f"model     {card['name']}")
    print(f"version   {card['version']}")
    print(f"sha256    {card['sha256']}")
    print(f"network   LieResNet {cfg.group}, width {cfg.width}, depth {cfg.depth}, "
          f"{sum(p.numel() for p in bundle.model.parameters()):,} parameters")
    print("targets   " + ", ".join(f"{t} ({BY_NAME[t].unit})" for t in card["targets"]))
    training = card.get("training")
    if isinstance(training, dict) and training:
        print("training")
        for key, value in training.items():
            print(f"  {key:<22} {json.dumps(value) if isinstance(value, dict | list) else value}")
    rows = [p for p in card["properties"] if p["test_mae"] is not None and not p["atomization"]]
    if rows:
        print("test MAE")
        print(f"  {'property':<10} {'MAE':>12}  {'unit':<12} {'MAE (paper unit)':>18}")
        for p in rows:
            prop = BY_NAME[p["name"]]
            paper = f"{p['test_mae'] * prop.to_paper:.4g} {prop.paper_unit}"
            print(f"  {p['name']:<10} {p['test_mae']:>12.5g}  {p['unit']:<12} {paper:>18}")
    else:
        print("test MAE  (not recorded in this bundle)")
    return 0


# --------------------------------------------------------------------------------------------------
# lieprop train, lieprop evaluate: lieprop/training/commands.py
# lieprop predict    -> add `add_predict(sub)` + `run_predict(args)` here and list add_predict in COMMANDS
#                       (lieprop.inference.predict / parse_items give per-item results like REST)
# --------------------------------------------------------------------------------------------------

#: Subcommand registrars, in ``--help`` order.
COMMANDS: list[Callable[[Subparsers], None]] = [add_serve, add_info, add_train, add_evaluate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lieprop", description=lieprop.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lieprop {lieprop.__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
