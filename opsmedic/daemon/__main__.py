"""`python -m opsmedic.daemon [flags]`: the same as `opsmedic daemon [flags]` (used by tests and images)."""

from __future__ import annotations

import argparse
import sys

from opsmedic.daemon import add_parser


def main(argv: list[str] | None = None) -> int:
    from core.errors import InputError, OpsmedicError

    parser = add_parser(argparse.ArgumentParser().add_subparsers(dest="command"))
    parser.prog = "python -m opsmedic.daemon"
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from infra.tracing import setup_tracing_from_env

        setup_tracing_from_env()  # OPSMEDIC_OTEL_EXPORTER=console|otlp
        return int(args.func(args))
    except InputError as exc:
        print(f"opsmedic: {exc}", file=sys.stderr, flush=True)
        return 2
    except OpsmedicError as exc:
        print(f"opsmedic: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
