"""The ``lieprop`` command: ``serve``, ``info``, ``predict``, ``train``, ``evaluate``, ``discover`` and the rest.

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
from typing import Any, Literal

import lieprop
from lieprop.cli_parser import subcommand
from lieprop.training.commands import add_calibrate, add_ensemble, add_evaluate, add_train
from lieprop.training.discover import add_discover

Subparsers = Any  # argparse._SubParsersAction, which argparse does not export



# --------------------------------------------------------------------------------------------------
# lieprop serve


def add_serve(sub: Subparsers) -> None:
    p = subcommand(sub, "serve", "run the REST prediction service (uvicorn) with the bundled or a given model", """\
  lieprop serve                                   # bundled model on 127.0.0.1:8000
  lieprop serve --host 0.0.0.0 --port 8080 --model runs/best/model.pt
  lieprop serve --max-batch-size 32 --max-wait-ms 2 --workers-embed 2
  LIEPROP_API_KEY=secret lieprop serve            # every flag is also an environment variable LIEPROP_<NAME>
  curl -s localhost:8000/v1/predict -H 'content-type: application/json' \\
       -d '{"molecules": [{"smiles": "CCO"}], "properties": ["homo", "lumo"]}'""")
    from lieprop.service.settings import Settings

    _add_settings_flags(p, Settings, "LIEPROP_")
    p.set_defaults(func=run_serve)


def _add_settings_flags(p: argparse.ArgumentParser, model: Any, env_prefix: str, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of the pydantic settings class ``model`` (``max_batch_size`` -> ``--max-batch-size``),
    its description as help; unset flags stay None, so the environment and the defaults apply."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        env = f"{env_prefix}{name.upper()}"
        help = f"{field.description} (env {env})"
        kind = _scalar_type(field.annotation)
        if kind is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif typing.get_origin(field.annotation) is list:
            p.add_argument(flag, dest=name, nargs="+", default=None, metavar="VALUE", help=help)
        else:
            metavar = {int: "N", float: "X", Path: "PATH"}.get(kind, "TEXT")
            p.add_argument(flag, dest=name, type=kind, default=None, metavar=metavar, help=help)


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
    sys.setswitchinterval(settings.switch_interval_ms / 1000)  # this process is the server's (docs/API.md)
    try:
        load_model(settings.model)  # fail before binding the port, with the reason; the app reuses the cached load
    except (ModelNotFoundError, BundleError) as exc:
        print(f"lieprop serve: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from lieprop.service.app import create_app
    from lieprop.service.connections import protocol_class

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
                server_header=False, timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
                log_level=settings.log_level.lower(),
                http=protocol_class(settings.header_timeout_s, settings.max_header_bytes),
                timeout_keep_alive=settings.keep_alive_timeout_s,
                # uvicorn refuses a request once len(connections) >= limit, its own connection included: + 1 lets
                # max_connections connections be served at once
                limit_concurrency=settings.max_connections + 1)
    return 0


# --------------------------------------------------------------------------------------------------
# lieprop serve-ray


def add_serve_ray(sub: Subparsers) -> None:
    p = subcommand(sub, "serve-ray", "run the REST service as replicas on Ray Serve, each with its own model and "
                "dynamic batcher, behind Ray's HTTP proxy (needs pip install 'lieprop[ray]'; docs/SCALING.md)", """\
  lieprop serve-ray --replicas 2                          # two replicas on 127.0.0.1:8000
  lieprop serve-ray --min-replicas 1 --max-replicas 8     # autoscaled on requests in flight per replica
  lieprop serve-ray --replicas 4 --num-gpus 0.5           # two replicas per GPU (default: 1 GPU each when present)
  LIEPROP_RAY_ADDRESS=auto lieprop serve-ray --host 0.0.0.0 --replicas 8   # on a running Ray cluster
Every lieprop serve flag applies to each replica, except --jobs: replicas do not run batch jobs.""")
    from lieprop.service.settings import ReplicaSettings, Settings

    _add_settings_flags(p, ReplicaSettings, "LIEPROP_RAY_")
    _add_settings_flags(p, Settings, "LIEPROP_", skip=("jobs",))
    p.set_defaults(func=run_serve_ray)


def run_serve_ray(args: argparse.Namespace) -> int:
    import importlib.util
    import json
    import signal
    import threading

    from pydantic import ValidationError

    from lieprop.inference import ModelNotFoundError, load_model
    from lieprop.model.bundle import BundleError
    from lieprop.service.logs import configure_logging
    from lieprop.service.settings import ReplicaSettings, Settings

    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        print("lieprop serve-ray: needs Ray Serve: pip install 'lieprop[ray]'", file=sys.stderr)
        return 2
    from lieprop.service import replicas

    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**{k: v for k, v in given.items() if k in Settings.model_fields})
        scale = ReplicaSettings(**{k: v for k, v in given.items() if k in ReplicaSettings.model_fields})
    except ValidationError as exc:
        print(f"lieprop serve-ray: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    try:
        load_model(settings.model)  # fail before starting Ray, with the reason
    except (ModelNotFoundError, BundleError) as exc:
        print(f"lieprop serve-ray: {exc}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    try:
        states = replicas.start(settings, scale)
        print(json.dumps({"msg": "replicas running", "url": f"http://{settings.host}:{settings.port}",
                          "replicas": states}), file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopping.set())
        while not stopping.wait(1):  # the replicas (Ray actors) serve; this process waits for a signal
            pass
    finally:
        replicas.stop()
    return 0


# --------------------------------------------------------------------------------------------------
# lieprop info


def add_info(sub: Subparsers) -> None:
    p = subcommand(sub, "info", "print a model bundle's card: name, version, sha256, targets, training, test MAE", """\
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
    print(f"model     {card['name']}")
    print(f"version   {card['version']}")
    print(f"sha256    {card['sha256']}")
    covered = ("weights, config and metadata (sha256, meta_sha256)" if bundle.meta_verified else
               "weights and config (sha256); the metadata (test MAE, training) is not covered: an older bundle")
    print(f"verified  {covered}; an integrity check against corruption, not proof of origin")
    members = f", an ensemble of {card['members']} members" if card["members"] > 1 else ""
    print(f"network   {card['architecture']}: {card['network']}, "
          f"{sum(p.numel() for p in bundle.model.parameters()):,} parameters{members}")
    if card["uncertainty"]:
        print(f"std       every value carries one: {card['uncertainty']}")
    print("targets   " + ", ".join(f"{t} ({BY_NAME[t].unit})" for t in card["targets"]))
    training = card.get("training")
    if isinstance(training, dict) and training:
        print("training")
        for key, value in training.items():
            if key == "warm_start_from" and isinstance(value, dict):
                value = describe_lineage(value)
            print(f"  {key:<22} {json.dumps(value) if isinstance(value, dict | list) else value}")
    rows = [p for p in card["properties"] if p["test_mae"] is not None and not p["atomization"]]
    if rows:
        print("test MAE")
        print(f"  {'property':<10} {'MAE':>12}  {'unit':<12} {'MAE (paper unit)':>18} {'from SMILES':>14}")
        for p in rows:
            prop = BY_NAME[p["name"]]
            paper = f"{p['test_mae'] * prop.to_paper:.4g} {prop.paper_unit}"
            ff = p.get("test_mae_forcefield")
            smiles = f"{ff * prop.to_paper:.4g} {prop.paper_unit}" if ff is not None else "-"
            print(f"  {p['name']:<10} {p['test_mae']:>12.5g}  {p['unit']:<12} {paper:>18} {smiles:>14}")
    else:
        print("test MAE  (not recorded in this bundle)")
    for title, table in (("test MAE by atom count", card.get("test_mae_by_size")),
                         ("small-molecule set (<= 10 atoms, all splits) MAE by atom count",
                          card.get("small_mae_by_size"))):
        if table:
            shown = [t for t in ("homo", "gap", "u0", "mu") if t in card["targets"]]
            print(title)
            print(f"  {'atoms':<8} {'molecules':>9}  " + "  ".join(
                f"{t + ' (' + (BY_NAME[t].paper_unit or BY_NAME[t].unit) + ')':>12}" for t in shown))
            for label, row in table.items():
                print(f"  {label:<8} {row['n']:>9}  " + "  ".join(f"{row['mae'].get(t, float('nan')):>12.4g}"
                                                               for t in shown))
    for warning in card.get("size_warnings", {}).values():
        print(f"warning   {warning}")
    return 0


def describe_lineage(parent: dict) -> str:
    """'name sha256[:12] (N min, epoch E) <- its parent ...' for a warm-started bundle's chain of ancestors."""
    parts = []
    while isinstance(parent, dict) and parent:
        t = parent.get("training", {}) or {}
        parts.append(f"{parent.get('name', '?')} {str(parent.get('sha256', '?'))[:12]} "
                     f"({t.get('minutes', '?')} min, epoch {t.get('epoch', '?')})")
        parent = t.get("warm_start_from")
    return " <- ".join(parts)


# --------------------------------------------------------------------------------------------------
# lieprop predict (the pipeline: lieprop/scoring; docs/JOBS.md)


def add_job_option_flags(p: argparse.ArgumentParser) -> None:
    """A flag per option of :class:`lieprop.scoring.options.JobOptions` (``--smiles-column NAME``, ...), with its
    description and default; options only REST uploads have are left out. Values are validated by the model."""
    from lieprop.scoring.options import REST_ONLY, JobOptions, is_list, scalar_type

    for name, field in JobOptions.model_fields.items():
        if name in REST_ONLY:
            continue
        flag = "--" + name.replace("_", "-")
        default = "" if field.default is None else f" (default: {field.default})"
        kind = scalar_type(field)
        nargs = "+" if is_list(field) else None
        metavar = "N" if kind is int else "NAME" if nargs or name.endswith("_column") else name.upper()
        choices = list(typing.get_args(field.annotation)) if typing.get_origin(field.annotation) is Literal else None
        p.add_argument(flag, dest=name, type=kind, nargs=nargs, default=None, choices=choices,
                       metavar=None if choices else metavar, help=f"{field.description}{default}")


def add_predict(sub: Subparsers) -> None:
    from lieprop.data import formats
    from lieprop.scoring.pipeline import DEFAULT_MODEL_BATCH

    p = subcommand(sub, "predict", "score a file of molecules: one output row per input row, in order, resumable", f"""\
  lieprop predict library.csv --out scores.csv                 # CSV with a 'smiles' column -> CSV
  lieprop predict library.csv --out scores.parquet --smiles-column SMILES --id-column name
  lieprop predict docked.sdf --out docked.jsonl --properties homo lumo gap
  lieprop predict trajectory.extxyz --out traj.csv --workers 1
  lieprop predict big.csv.gz --out big.parquet --resume        # after Ctrl-C or kill -9: continue where it stopped
  lieprop predict big.csv --out big.parquet --engine ray       # on Ray (pip install 'lieprop[ray]'; RAY_ADDRESS)
inputs: {formats.describe()}
outputs (by extension): .csv, .jsonl/.ndjson, .parquet; failed rows carry an error code and message""")
    p.add_argument("input", type=Path, help="input file")
    p.add_argument("--out", "-o", dest="output", type=Path, required=True, metavar="OUTPUT",
                   help="output file: .csv, .jsonl or .parquet")
    add_job_option_flags(p)
    p.add_argument("--model", type=Path, default=None, metavar="PATH", help="model bundle (default: bundled)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="processes that read and embed molecules (default: all cores); Ray: model actors")
    p.add_argument("--model-batch", type=int, default=DEFAULT_MODEL_BATCH, metavar="N",
                   help=f"molecules per model call (default {DEFAULT_MODEL_BATCH})")
    p.add_argument("--max-atoms", type=int, default=None, metavar="N",
                   help="atoms per molecule, hydrogens included (default: QM9's 29); more -> too_many_atoms")
    p.add_argument("--device", default="auto", help="model device: auto (CUDA when present, else CPU), cpu, cuda, "
                   "cuda:1")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default) or ray (Ray Data; joins RAY_ADDRESS / --ray-address, else starts Ray here)")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster to join (default RAY_ADDRESS)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT, or discard an interrupted run")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from lieprop.data.elements import QM9_MAX_ATOMS
    from lieprop.inference import ModelNotFoundError, UnknownPropertyError, load_model
    from lieprop.model.bundle import BundleError
    from lieprop.scoring.options import REST_ONLY, JobOptions
    from lieprop.scoring.output import NothingToResume, OutputError
    from lieprop.scoring.pipeline import score_file

    def fail(message: object) -> int:
        print(f"lieprop predict: {message}", file=sys.stderr)
        return 2

    try:
        given = {name: getattr(args, name) for name in JobOptions.model_fields
                 if name not in REST_ONLY and getattr(args, name, None) is not None}  # --model here is a path
        options = JobOptions.parse(given).score_options(model_batch=args.model_batch,
                                                        max_atoms=args.max_atoms or QM9_MAX_ATOMS)
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        bundle = load_model(args.model)
    except (ValueError, ModelNotFoundError, BundleError) as exc:
        return fail(exc)
    engine = None
    if args.engine == "ray":
        from lieprop.model.loading import default_model_path
        from lieprop.scoring.ray_engine import RayEngine

        try:
            engine = RayEngine(args.model or default_model_path(), address=args.ray_address, workers=args.workers)
        except ImportError as exc:
            return fail(exc)
    else:
        import torch

        from lieprop.model.device import pick_device

        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            bundle.model.to(pick_device(args.device))
        except (RuntimeError, ValueError) as exc:
            return fail(f"cannot use device {args.device!r}: {exc}")
    try:
        summary = score_file(args.input, args.output, options, model=bundle, engine=engine, workers=args.workers,
                             resume=args.resume, overwrite=args.overwrite, progress=args.progress and not args.quiet)
    except NothingToResume as exc:
        if not args.quiet:
            print(f"lieprop predict: {exc}", file=sys.stderr)
        return 0
    except (FileNotFoundError, ValueError, UnknownPropertyError, OutputError) as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print(f"\nlieprop predict: interrupted; the completed chunks are saved in {args.output}.partial/; run the "
              "same command with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if engine is not None:
            engine.shutdown()
    if not args.quiet:
        print(summary.format(), file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# lieprop train, lieprop evaluate: lieprop/training/commands.py; lieprop discover: lieprop/training/discover.py
# --------------------------------------------------------------------------------------------------

#: Subcommand registrars, in ``--help`` order.
COMMANDS: list[Callable[[Subparsers], None]] = [add_serve, add_serve_ray, add_info, add_predict, add_train,
                                                add_evaluate, add_ensemble, add_calibrate, add_discover]


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
