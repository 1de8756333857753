"""`symfield` command line."""

from __future__ import annotations

import argparse
import sys

from . import build


def _cmd_build(args: argparse.Namespace) -> int:
    results = build.run(check=args.check)
    width = max(len(r.path) for r in results)
    for r in results:
        print(f"{r.path:<{width}}  {r.status:<9}  {r.derivation}  {r.seconds:.1f}s")
    bad = [r for r in results if r.status in ("differs", "missing")]
    if bad:
        print(f"symfield build --check: {len(bad)} file(s) differ from the derivations: "
              + ", ".join(r.path for r in bad), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="symfield")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="derive everything; write generated/ and docs/")
    p.add_argument("--check", action="store_true", help="fail if disk differs from derivations")
    p.set_defaults(func=_cmd_build)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
