"""`python -m orchestrator.api`: the OpenAPI document, and token entries for a tokens file.

python -m orchestrator.api --write-openapi [PATH]   # (re)write docs/openapi.json
python -m orchestrator.api --check-openapi [PATH]   # exit 1 if it is out of date
python -m orchestrator.api hash-token [--role R] [--name N] < token-file
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from orchestrator.errors import OrchestratorError


def main(argv: Sequence[str] | None = None) -> int:
    from orchestrator.api import openapi
    from orchestrator.api.auth import Role, hash_token_line

    parser = argparse.ArgumentParser(prog="python -m orchestrator.api", description=__doc__.splitlines()[0])
    parser.add_argument("--write-openapi", nargs="?", const=openapi.DOCUMENT_PATH, type=Path, metavar="PATH")
    parser.add_argument("--check-openapi", nargs="?", const=openapi.DOCUMENT_PATH, type=Path, metavar="PATH")
    sub = parser.add_subparsers(dest="command")
    hashing = sub.add_parser("hash-token", help="print a tokens-file entry for the token read on stdin")
    hashing.add_argument("--role", choices=[r.value for r in Role], default=Role.OPERATOR.value)
    hashing.add_argument("--name", default="")
    args = parser.parse_args(argv)
    try:
        if args.command == "hash-token":
            print(hash_token_line(sys.stdin.readline(), args.role, args.name))
            return 0
        if args.write_openapi is not None:
            print(f"wrote {openapi.write_document(args.write_openapi)}")
            return 0
        if args.check_openapi is not None:
            if openapi.document_is_current(args.check_openapi):
                print(f"{args.check_openapi} is current")
                return 0
            print(
                f"error: {args.check_openapi} differs from the API; run: python -m orchestrator.api --write-openapi",
                file=sys.stderr,
            )
            return 1
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
