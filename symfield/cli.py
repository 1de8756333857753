"""`symfield` command line (DESIGN.md, "Command-line contract").

Bad input exits with status 2 and one line on stderr naming the parameter, the
value and the allowed range; no traceback for user errors.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

import numpy as np

from .ir import GenerationError
from .spec import NET_KINDS, NetworkSpec, SpecError, check_real, parse_kernel


class UsageError(Exception):
    """A command-line usage problem (argparse's own errors)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, status 2
        raise UsageError(message)


# -- shared flags -----------------------------------------------------------------------
def _add_network_flags(p: argparse.ArgumentParser, *, depth: bool = True) -> None:
    p.add_argument("--net", default="resnet", help=f"one of {', '.join(NET_KINDS)}")
    p.add_argument("--activation", default="erf",
                   help="erf, relu, abs, linear, leaky_relu:ALPHA, tanh, gelu, silu, "
                        "or expr:<SymPy expression in x>")
    p.add_argument("--sw2", default="1.25", help="hidden weight variance sigma_w^2 (>= 0)")
    p.add_argument("--sb2", default="0.05", help="hidden bias variance sigma_b^2 (>= 0)")
    p.add_argument("--rho", default=None, help="residual scaling (ResNet only, >= 0)")
    if depth:
        p.add_argument("--depth", default="10", help="number of hidden layers L (>= 1)")
    p.add_argument("--K0", default="0.05,0.03;0.03,0.05",
                   help="input kernel: a number, or rows 'a,b;c,d'")
    p.add_argument("--sw2-out", default="1.0", help="readout weight variance (>= 0)")
    p.add_argument("--sb2-out", default="0.0", help="readout bias variance (>= 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def network_spec(args: argparse.Namespace, depth: object | None = None) -> NetworkSpec:
    """Build and validate the NetworkSpec from the shared flags."""
    rho = args.rho
    if args.net == "ffnet" and rho is not None:
        raise SpecError("rho", rho, "only a ResNet has a residual scaling; "
                                    "drop --rho for --net ffnet")
    from .activations import resolve

    resolve(args.activation)  # names the activation in the error before any work
    return NetworkSpec(
        net=args.net, activation=args.activation,
        sw2=check_real("sw2", args.sw2), sb2=check_real("sb2", args.sb2),
        depth=args.depth if depth is None else depth,
        rho=None if rho is None else check_real("rho", rho),
        sw2_out=check_real("sw2_out", args.sw2_out), sb2_out=check_real("sb2_out", args.sb2_out))


# -- output helpers ---------------------------------------------------------------------
def _jsonable(value: object) -> object:
    """numpy arrays -> nested lists; non-finite floats -> None (JSON has no inf/NaN)."""
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _print_matrix(name: str, matrix: np.ndarray) -> None:
    print(f"{name}:")
    for row in np.atleast_2d(matrix):
        print("  " + "  ".join(f"{x: .12g}" for x in row))


# -- commands ---------------------------------------------------------------------------
KERNEL_KEYS = ("K", "K_out", "chi", "chi_out", "log_abs_chi", "chi_sign", "log_abs_chi_out",
               "chi_out_sign")


def _cmd_kernel(args: argparse.Namespace) -> int:
    spec = network_spec(args)
    K0 = parse_kernel(args.K0)
    if args.dps is not None:
        dps = int(check_real("dps", args.dps, minimum=15))
        from .verify.mp import propagate_mp

        result = propagate_mp(spec, K0, dps=dps, tensor=args.tensor, layers=args.layers)
        payload = {"method": f"mpmath ({dps} digits)", **_mp_payload(result, dps)}
    else:
        from .kernel import compute

        result = compute(spec, K0, tensor=args.tensor, layers=args.layers)
        keys = list(KERNEL_KEYS)
        keys += ["response_tensor", "response_tensor_out"] if args.tensor else []
        keys += ["K_layers", "chi_layers"] if args.layers else []
        payload = {"method": "float64 (generated numpy)", "moments": result["moments"],
                   **{k: result[k] for k in keys}, "warnings": result["warnings"]}
    payload = {"spec": spec.to_dict(), "K0": K0, **payload}
    if args.json:
        print(json.dumps(_jsonable(payload)))
        return 0
    print(f"{spec.net} {spec.activation}  L={spec.depth}  sw2={spec.sw2} sb2={spec.sb2}"
          + (f" rho={spec.rho}" if spec.rho is not None else "")
          + f"  [{payload['method']}; moments {payload.get('moments', '')}]")
    for key in ("K", "K_out", "chi", "chi_out"):
        value = payload[key]
        _print_matrix(key, np.array(value, dtype=float) if args.dps else value)
    for warning in payload.get("warnings", []):
        print(f"warning: {warning}")
    return 0


def _mp_payload(result: dict, dps: int) -> dict:
    """mpmath results as decimal strings with dps significant digits."""
    import mpmath

    def fmt(value: object) -> object:
        if isinstance(value, (list, tuple)):
            return [fmt(v) for v in value]
        if hasattr(value, "tolist"):
            return fmt(value.tolist())
        return mpmath.nstr(value, dps, strip_zeros=False)

    return {k: fmt(v) for k, v in result.items()}


def _cmd_build(args: argparse.Namespace) -> int:
    from . import build

    results = build.run(check=args.check)
    width = max(len(r.path) for r in results)
    if not args.json:
        for r in results:
            print(f"{r.path:<{width}}  {r.status:<9}  {r.derivation}  {r.seconds:.1f}s")
    else:
        print(json.dumps({"files": [r.__dict__ for r in results]}))
    bad = [r for r in results if r.status in ("differs", "missing")]
    if bad:
        print(f"symfield build --check: {len(bad)} file(s) differ from the derivations: "
              + ", ".join(r.path for r in bad), file=sys.stderr)
        return 1
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify.table import format_table, run_verify

    rows = run_verify(progress=not args.json)
    failed = [r for r in rows if not r["ok"]]
    if args.json:
        print(json.dumps(_jsonable({"rows": rows, "ok": not failed})))
    else:
        print(format_table(rows))
    return 1 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run

    result = run(repeats=args.repeats, progress=not args.json)
    print(json.dumps(_jsonable(result)) if args.json else format_table(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="symfield", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("build", help="derive everything; write generated/ and docs/")
    p.add_argument("--check", action="store_true", help="fail if disk differs from derivations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_build)

    p = sub.add_parser("kernel", help="K^(L), K_out and responses of one network")
    _add_network_flags(p)
    p.add_argument("--dps", default=None, help="use the mpmath path at this many digits")
    p.add_argument("--tensor", action="store_true", help="add the full response tensor")
    p.add_argument("--layers", action="store_true", help="add K and chi for every layer")
    p.set_defaults(func=_cmd_kernel)

    p = sub.add_parser("verify", help="generated float64 code against mpmath (30+ digits)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("bench", help="time generated code against a plain numpy loop")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    handlers: dict[type, Callable[[Exception], str]] = {
        SpecError: str, UsageError: str,
    }
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except tuple(handlers) as error:
        print(f"symfield: error: {handlers[type(error)](error)}", file=sys.stderr)
        return 2
    except GenerationError as error:  # a user's activation that cannot become code
        print(f"symfield: error: activation: {error}", file=sys.stderr)
        return 2
    except ArithmeticError as error:  # NumericalError and friends: a result we cannot give
        print(f"symfield: error: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
