"""The ``workbench`` command line: the one seam used by people, Snakemake, Optuna and tests.

Each verb imports what it needs inside its handler, so ``workbench --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def _config_check(args: argparse.Namespace) -> int:
    from workbench.config import ConfigError, load_config

    failed = 0
    for path in args.files:
        try:
            cfg = load_config(path, args.set)
        except (ConfigError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.quiet:
            print(f"ok: {path} (hash {cfg.config_hash()})")
        else:
            print(f"# {path}: ok (hash {cfg.config_hash()})")
            print(cfg.to_yaml())
    return 1 if failed else 0


def _config_defaults(args: argparse.Namespace) -> int:
    from workbench.config import parse_config

    print(parse_config({"method": args.method}).to_yaml(), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.kind == "methods":
        from workbench.methods import METHODS

        for name, m in METHODS.items():
            print(f"{name:8s} {m.family:4s} {m.summary}")
        return 0
    if args.kind == "backends":
        from workbench.config import BACKENDS as reg
    elif args.kind == "fallbacks":
        from workbench.algo import FALLBACKS as reg
    else:
        from workbench.algo import STABILITY_WEIGHTS as reg
    print("\n".join(reg.names()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from workbench import __version__
    from workbench.methods import METHODS

    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Reproduce, extend and stress-test Sign-Gated On-Policy Distillation (SG-OPD).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    config = verbs.add_parser("config", help="validate and show run configs")
    config_verbs = config.add_subparsers(dest="config_verb", metavar="ACTION", required=True)
    check = config_verbs.add_parser(
        "check", help="validate run config files and print the resolved configs",
        description="Validate YAML run configs (each lists only what differs from the defaults) "
        "and print the resolved config. Exits 1 if any file is invalid.",
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a field, e.g. --set gate.lambda_high=1.5 (repeatable)")
    check.add_argument("-q", "--quiet", action="store_true", help="print one line per file")
    check.set_defaults(handler=_config_check)
    defaults = config_verbs.add_parser("defaults", help="print the fully resolved default config of a method")
    defaults.add_argument("--method", choices=METHODS.names(), default="sgopd")
    defaults.set_defaults(handler=_config_defaults)

    lister = verbs.add_parser("list", help="list the names a registry accepts")
    lister.add_argument("kind", choices=("methods", "fallbacks", "stability", "backends"))
    lister.set_defaults(handler=_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
