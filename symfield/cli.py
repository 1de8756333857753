"""`symfield` command line: one JSON object with `--json` (README, "Commands").

Bad input exits with status 2 and one line on stderr naming the parameter, the
value and the allowed range; no traceback for user errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

from .ir import GenerationError
from .spec import (
    MAX_DEPTH,
    MAX_DPS,
    MIN_DPS,
    NET_KINDS,
    NetworkSpec,
    SpecError,
    check_depth,
    check_integer,
    check_real,
    parse_kernel,
)

#: Largest depth optimal-rho scans (about 100 tangent passes over the rho grid per depth).
MAX_DEPTH_OPTIMAL = 10**5


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
        p.add_argument("--depth", default="10",
                       help=f"number of hidden layers L (1 to {MAX_DEPTH})")
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
        sw2=check_real("sw2", args.sw2, minimum=0.0, what="a weight variance"),
        sb2=check_real("sb2", args.sb2, minimum=0.0, what="a bias variance"),
        depth=check_depth("depth", args.depth, MAX_DEPTH) if depth is None else depth,
        rho=None if rho is None else check_real("rho", rho, minimum=0.0,
                                                what="the residual scaling"),
        sw2_out=check_real("sw2_out", args.sw2_out, minimum=0.0, what="a weight variance"),
        sb2_out=check_real("sb2_out", args.sb2_out, minimum=0.0, what="a bias variance"))


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


def _print_matrix(name: str, matrix: np.ndarray | list) -> None:
    """Rows of floats (12 significant digits) or of decimal strings (--dps, as computed)."""
    print(f"{name}:")
    rows = matrix if isinstance(matrix, list) else np.atleast_2d(matrix)
    for row in rows:
        print("  " + "  ".join(x if isinstance(x, str) else f"{x: .12g}" for x in row))


# -- commands ---------------------------------------------------------------------------
KERNEL_KEYS = ("K", "K_out", "chi", "chi_out", "log_abs_chi", "chi_sign", "log_abs_chi_out",
               "chi_out_sign")


def _dps(args: argparse.Namespace) -> int | None:
    """--dps: an integer number of digits in [MIN_DPS, MAX_DPS] (15.7 is an error)."""
    return None if args.dps is None else check_integer("dps", args.dps, MIN_DPS, MAX_DPS)


def _cmd_kernel(args: argparse.Namespace) -> int:
    from .progress import Progress

    spec = network_spec(args)
    K0 = parse_kernel(args.K0)
    dps = _dps(args)
    progress = Progress("kernel", "depth", spec.depth)
    if dps is not None:
        from .precision import propagate_mp

        # guard digits: rounding errors grow with the number of layers (about L ulps)
        guard = 3 + len(str(spec.depth))
        result = propagate_mp(spec, K0, dps=dps + guard, tensor=args.tensor,
                              layers=args.layers, progress=progress)
        progress.close()
        payload = {"method": f"mpmath ({dps} digits)", **_mp_payload(_mp_logs(result), dps),
                   "moments": _mp_moments(spec.activation, dps), "warnings": []}
    else:
        from .kernel import compute

        result = compute(spec, K0, tensor=args.tensor, layers=args.layers, progress=progress)
        progress.close()
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
        _print_matrix(key, value)
    for warning in payload.get("warnings", []):
        print(f"warning: {warning}")
    return 0


def _mp_logs(result: dict) -> dict:
    """log|chi|, sign(chi) (and for chi_out) from the mpmath values, as the float64 path
    reports them (there they keep deep products finite; mpmath has no overflow)."""
    import mpmath

    def log_abs(m: list) -> list:
        return [[mpmath.log(abs(v)) if v else -mpmath.inf for v in row] for row in m]

    def sign(m: list) -> list:
        return [[mpmath.mpf(mpmath.sign(v)) for v in row] for row in m]

    out = dict(result)
    for key in ("chi", "chi_out"):
        out[f"log_abs_{key}"], out[f"{key}_sign"] = log_abs(result[key]), sign(result[key])
    return out


def _mp_moments(activation: str, dps: int) -> str:
    from .activations import derive, resolve

    if derive(resolve(activation).family).kind == "exact":
        return f"exact (closed forms evaluated at {dps} digits)"
    return f"quadrature (mpmath Gauss-Legendre panels at {dps} digits)"


def _mp_payload(result: dict, dps: int) -> dict:
    """mpmath results as decimal strings with dps significant digits."""
    import mpmath

    def fmt(value: object) -> object:
        if isinstance(value, (list, tuple)):
            return [fmt(v) for v in value]
        if hasattr(value, "tolist"):
            return fmt(value.tolist())
        if isinstance(value, mpmath.mpf) and not mpmath.isfinite(value):
            return None  # log|0|: JSON has no infinity (the float64 path prints null too)
        return mpmath.nstr(value, dps, strip_zeros=False)

    return {k: fmt(v) for k, v in result.items()}


def _depth_list(text: str) -> list[int]:
    items = [t for t in str(text).replace(" ", "").split(",") if t]
    if not items:
        raise SpecError("depths", text, "must be a comma-separated list of depths >= 1")
    return [check_integer("depths", t, 1, MAX_DEPTH_OPTIMAL) for t in items]


def _input_kernel(args: argparse.Namespace) -> np.ndarray:
    """--K0, or --data X.npy through the input layer (sw2_in, sb2_in)."""
    if args.data is None:
        return parse_kernel(args.K0)
    from .spec import check_kernel

    try:
        data = np.load(args.data)
    except (OSError, ValueError) as error:
        raise SpecError("data", args.data, f"must be a readable .npy file ({error})") from None
    if data.ndim != 2 or data.shape[0] < 1 or not np.all(np.isfinite(data)):
        raise SpecError("data", args.data, "must hold a finite 2-D array (rows are inputs)")
    sw2_in = check_real("sw2_in", args.sw2_in, minimum=0.0, what="input weight variance")
    sb2_in = check_real("sb2_in", args.sb2_in, minimum=0.0, what="input bias variance")
    return check_kernel("K0", sb2_in + sw2_in * data @ data.T / data.shape[1])


def _cmd_optimal_rho(args: argparse.Namespace) -> int:
    from .activations import resolve
    from .optimal import optimal_rho
    from .progress import Progress

    if args.net != "resnet":
        raise SpecError("net", args.net, "optimal rho is defined for --net resnet only")
    resolve(args.activation)
    sw2, sb2 = check_real("sw2", args.sw2, minimum=0.0), check_real("sb2", args.sb2, minimum=0.0)
    sw2_out = check_real("sw2_out", args.sw2_out, minimum=0.0)
    sb2_out = check_real("sb2_out", args.sb2_out, minimum=0.0)
    depths = _depth_list(args.depths)
    dps = _dps(args)
    if dps is not None and args.data is not None:
        raise SpecError("dps", args.dps, "not available with --data (one mpmath refinement "
                                         "per input pair): drop --dps or --data")
    K0 = _input_kernel(args)
    progress = Progress("optimal-rho", "depths", args.depths, proportional=False)
    # stages: float64 roots, (mpmath refinement), continuum limit
    cut = (0.1, 0.95) if dps is not None else (0.9, 0.9)
    result = optimal_rho(args.activation, sw2, sb2, K0, depths, sw2_out=sw2_out,
                         sb2_out=sb2_out, progress=progress.span(0.0, cut[0]))
    size = K0.shape[0]
    named = {"diagonal": (0, 0)} | ({"offdiagonal": (0, 1)} if size > 1 else {})
    payload: dict[str, object] = {"activation": args.activation, "sw2": sw2, "sb2": sb2,
                                  "K0": K0, "depths": depths, "method": "float64 (generated "
                                  "d chi_out/d rho, batched Illinois root)"}
    refined: dict[str, list] = {}
    for label, entry in named.items():
        optima = result.optima[entry]
        payload[f"rho_star_{label}"] = [o.rho_star for o in optima]
        payload[f"chi_out_max_{label}"] = [o.chi_out_max for o in optima]
        payload[f"second_derivative_{label}"] = [o.second_derivative for o in optima]
        payload[f"exponent_{label}"] = result.exponent(entry)
        if result.exponent_reason(entry):
            payload[f"exponent_reason_{label}"] = result.exponent_reason(entry)
        reasons = {str(o.depth): o.reason for o in optima if o.reason}
        if reasons:
            payload[f"reason_{label}"] = reasons
    if dps is not None:
        refined = _refine_payload(args.activation, sw2, sb2, K0, result, named, dps, sw2_out,
                                  sb2_out, progress.span(cut[0], cut[1], "mpmath refinement"))
        payload.update(refined)
        payload["method"] = f"mpmath ({dps} digits), started from the float64 roots"
    if size == 1:
        payload["rho_star_offdiagonal"] = None
        payload["reason_offdiagonal"] = "one input: no off-diagonal response"
    if not args.no_continuum:
        progress.span(cut[1], 1.0, "continuum limit")(0.0)
        payload.update(_continuum_payload(args.activation, sw2, sb2, K0, depths, payload,
                                          sw2_out, named, dps))
    progress.close()
    for label in named:
        payload.pop(f"_rho_mp_{label}", None)
    if args.data is not None:
        payload["pairs"] = _pairs_payload(result, depths)
    if args.json:
        print(json.dumps(_jsonable(payload)))
        return 0
    print(f"rho* for resnet {args.activation}, sw2={sw2}, sb2={sb2} [{payload['method']}]")
    for label in named:
        print(f"{label}: exponent of rho* vs L = {payload[f'exponent_{label}']}"
              + (f" ({payload[f'exponent_reason_{label}']})"
                 if f"exponent_reason_{label}" in payload else ""))
        for i, depth in enumerate(depths):
            rho = payload[f"rho_star_{label}"][i]
            print(f"  L={depth:<6} rho*={rho}  chi_out_max={payload[f'chi_out_max_{label}'][i]}")
    return 0


def _refine_payload(activation: str, sw2: float, sb2: float, K0: np.ndarray, result,
                    named: dict, dps: int, sw2_out: float, sb2_out: float, progress) -> dict:
    """rho*, chi_out_max, the curvature and the exponent on the mpmath path (strings)."""
    import mpmath

    from .optimal import mp_exponent, refine_mp_full

    def text(value: object) -> str | None:
        return None if value is None else mpmath.nstr(value, dps)

    # the work of a refinement is proportional to its depth
    total = sum(o.depth for entry in named.values() for o in result.optima[entry]
                if o.rho_star is not None)
    out: dict[str, object] = {}
    done = 0
    for label, entry in named.items():
        optima = result.optima[entry]
        found = []
        for o in optima:
            if o.rho_star is None:
                found.append(None)
                continue
            found.append(refine_mp_full(
                activation, sw2, sb2, K0, o.depth, entry, o.rho_star, dps, sw2_out=sw2_out,
                sb2_out=sb2_out,
                progress=lambda f, done=done, depth=o.depth: progress((done + depth * f) / total)))
            done += o.depth
        rhos = [None if f is None else f.rho_star for f in found]
        out[f"rho_star_{label}"] = [text(r) for r in rhos]
        out[f"chi_out_max_{label}"] = [None if f is None else text(f.chi_out_max)
                                       for f in found]
        out[f"second_derivative_{label}"] = [None if f is None else text(f.second_derivative)
                                             for f in found]
        with mpmath.workdps(dps + 10):
            out[f"exponent_{label}"] = text(mp_exponent(result.depths, rhos))
        out[f"_rho_mp_{label}"] = rhos  # for the continuum gaps; dropped before printing
    return out


def _continuum_payload(activation: str, sw2: float, sb2: float, K0: np.ndarray,
                       depths: list[int], payload: dict, sw2_out: float, named: dict,
                       dps: int | None = None) -> dict:
    """Continuum-limit optimum, rho*_continuum = sqrt(t*/L), and the relative gap per depth.

    With ``dps`` every number is an mpmath decimal string (continuum computed at dps
    digits, gaps against the mpmath-refined rho*); otherwise floats.
    """
    import mpmath

    from .continuum import continuum_optimum

    def number(value: object) -> object:
        if value is None:
            return None
        return mpmath.nstr(value, dps) if dps is not None else float(value)  # type: ignore

    continuum: dict[str, object] = {}
    per_depth: dict[str, object] = {}
    gaps: dict[str, object] = {}
    for label in named:
        c = continuum_optimum(activation, sw2, sb2, K0, response=label, sw2_out=sw2_out,
                              **({"dps": dps} if dps is not None else {}))
        if c.sqrt_tstar is None:
            continuum[label] = {"sqrt_tstar": None, "K_star": None, "reason": c.reason}
            per_depth[label] = [None] * len(depths)
            gaps[label] = [None] * len(depths)
            continue
        K_star = list(c.K_star) if isinstance(c.K_star, tuple) else c.K_star
        continuum[label] = {"sqrt_tstar": number(c.sqrt_tstar), "t_star": number(c.t_star),
                            "K_star": ([number(k) for k in K_star] if isinstance(K_star, list)
                                       else number(K_star))}
        exact = payload.pop(f"_rho_mp_{label}", None) or payload[f"rho_star_{label}"]
        with mpmath.workdps((dps or 15) + 10):
            rhos = [c.rho_star(depth) for depth in depths]
            per_depth[label] = [number(r) for r in rhos]
            gaps[label] = [None if o is None else number(abs(r - o) / o)
                           for r, o in zip(rhos, exact, strict=True)]
    return {"continuum": continuum, "rho_star_continuum": per_depth,
            "continuum_relative_gap": gaps}


def _pairs_payload(result, depths: list[int]) -> dict:
    """rho* per input pair (data mode) and its spread, per depth."""
    diag = [e for e in result.optima if e[0] == e[1]]
    off = [e for e in result.optima if e[0] != e[1]]
    out: dict[str, object] = {"entries": [list(e) for e in result.optima],
                              "rho_star": [[o.rho_star for o in result.optima[e]]
                                           for e in result.optima]}
    for label, entries in (("diagonal", diag), ("offdiagonal", off)):
        spread = []
        for i, _ in enumerate(depths):
            values = np.array([result.optima[e][i].rho_star for e in entries
                               if result.optima[e][i].rho_star is not None])
            spread.append(None if values.size == 0 else {
                "count": int(values.size), "missing": len(entries) - int(values.size),
                "min": float(values.min()), "max": float(values.max()),
                "mean": float(values.mean()), "std": float(values.std()),
                "relative_spread": float((values.max() - values.min()) / values.mean())})
        out[f"spread_{label}"] = spread
    return out


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate import check_count, format_result, nngp_reference, result_payload, simulate

    spec = network_spec(args)
    width = check_count("width", args.width, 1)
    inits = check_count("inits", args.inits, 2)
    seed = check_count("seed", args.seed, 0)
    batch = None if args.batch is None else check_count("batch", args.batch, 1)
    workers = None if args.workers is None else check_count("workers", args.workers, 1)
    if workers is not None and args.scheduler is not None:
        raise SpecError("workers", args.workers, "give either --workers (a local cluster) or "
                                                 "--scheduler (an existing one), not both")
    if args.save_samples is not None:
        from pathlib import Path

        if not Path(args.save_samples).resolve().parent.is_dir():
            raise SpecError("save_samples", args.save_samples, "its directory does not exist")
    K0 = _input_kernel(args)
    if args.data is not None:  # echo the input layer's variances in the spec
        from dataclasses import replace

        spec = replace(spec, sw2_in=float(args.sw2_in), sb2_in=float(args.sb2_in))
    result = simulate(spec, K0, width, inits, seed, batch, progress=not args.no_progress,
                      method=args.method, workers=workers, scheduler=args.scheduler,
                      keep_samples=args.save_samples is not None)
    if args.save_samples is not None:
        from .simulate import save_samples

        save_samples(result, args.save_samples)
    nngp = None if args.no_nngp else nngp_reference(spec, K0)
    if args.json:
        print(json.dumps(_jsonable(result_payload(result, nngp))))
    else:
        print(format_result(result, nngp))
    return 0


def _cmd_nlo(args: argparse.Namespace) -> int:
    from .nlo import format_text, run, run_mp

    spec = network_spec(args)
    dps = _dps(args)
    if dps is not None:
        result = run_mp(spec, args.K0, dps)
    else:
        result = run(spec, args.K0)
    print(json.dumps(_jsonable(result)) if args.json else format_text(result))
    return 0


def _cmd_criticality(args: argparse.Namespace) -> int:
    from .activations import resolve
    from .criticality import analyse, format_text

    resolve(args.activation)  # names the activation in the error before any work
    sw2 = check_real("sw2", args.sw2, minimum=0.0, what="a weight variance")
    sb2 = check_real("sb2", args.sb2, minimum=0.0, what="a bias variance")
    result = analyse(args.activation, sw2, sb2, dps=_dps(args))
    print(json.dumps(_jsonable(result)) if args.json else format_text(result))
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .figures import make_figures

    summary = make_figures(Path(args.out), progress=True, quick=args.quick)
    if args.json:
        print(json.dumps(_jsonable(summary)))
    else:
        print(f"figures written to {args.out}/ (summary.json has the numbers)")
    return 0


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

    rows = run_verify(quick=args.quick, progress=True)  # progress goes to stderr
    failed = [r for r in rows if not r["ok"]]
    seconds = max(r.get("total_seconds", 0.0) for r in rows)
    if args.json:
        print(json.dumps(_jsonable({"rows": rows, "ok": not failed, "seconds": seconds,
                                    "failed": [r["routine"] for r in failed]})))
    else:
        print(format_table(rows))
    return 1 if failed else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_table, run

    repeats = check_integer("repeats", args.repeats, 1, 1000)
    result = run(repeats=repeats, progress=not args.json)
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

    p = sub.add_parser("optimal-rho", help="rho* maximising chi_out per depth (ResNet)")
    _add_network_flags(p, depth=False)
    p.add_argument("--depths", default="10,50,100,200", help="comma-separated depths")
    p.add_argument("--dps", default=None, help="refine the roots on the mpmath path")
    p.add_argument("--data", default=None, help="X.npy (rows are inputs) instead of --K0")
    p.add_argument("--sw2-in", default="1.0", help="input weight variance (with --data)")
    p.add_argument("--sb2-in", default="0.0", help="input bias variance (with --data)")
    p.add_argument("--no-continuum", action="store_true", help="skip the continuum limit")
    p.set_defaults(func=_cmd_optimal_rho)

    p = sub.add_parser("simulate", help="Monte Carlo of finite-width networks at initialization")
    _add_network_flags(p)
    p.add_argument("--width", default="100", help="hidden width N (>= 1)")
    p.add_argument("--inits", default="1000", help="number of initializations (>= 2)")
    p.add_argument("--seed", default="0", help="seed (>= 0); results depend only on it")
    p.add_argument("--method", default="kernel",
                   help="kernel (h ~ N(0, C) per layer: exact, fast) or weights (literal W)")
    p.add_argument("--batch", default=None, help="initializations per batch (memory)")
    p.add_argument("--data", default=None, help="X.npy (rows are inputs) instead of --K0")
    p.add_argument("--sw2-in", default="1.0", help="input weight variance (with --data)")
    p.add_argument("--sb2-in", default="0.0", help="input bias variance (with --data)")
    p.add_argument("--workers", default=None,
                   help="run on a local dask.distributed cluster of this many processes")
    p.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--no-nngp", action="store_true",
                   help="skip the NNGP reference (a user activation generates code for it)")
    p.add_argument("--save-samples", default=None, metavar="FILE.npz",
                   help="also write every initialization's K^(l), C^(l), y y^T to FILE.npz")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("nlo", help="one-loop (1/N) variances, covariances and mean shifts")
    _add_network_flags(p)
    p.set_defaults(K0="0.8")
    p.add_argument("--dps", default=None, help="evaluate on the mpmath path at this many digits")
    p.set_defaults(func=_cmd_nlo)

    p = sub.add_parser("criticality", help="FFNet order to chaos: q*, c*, chi_1, depth scales")
    p.add_argument("--activation", default="tanh",
                   help="erf, relu, abs, linear, leaky_relu:ALPHA, tanh, gelu, silu, "
                        "or expr:<SymPy expression in x>")
    p.add_argument("--sw2", default="1.5", help="weight variance sigma_w^2 (>= 0)")
    p.add_argument("--sb2", default="0.05", help="bias variance sigma_b^2 (>= 0)")
    p.add_argument("--dps", default=None, help="polish on the mpmath path at this many digits")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_criticality)

    p = sub.add_parser("figures", help="optimal-rho figures as PNG (needs the plot extra)")
    p.add_argument("--out", default="figures", help="directory for the PNG files")
    p.add_argument("--quick", action="store_true", help="smaller grids (a smoke test)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_figures)

    p = sub.add_parser("verify", help="generated code and the mpmath path against an "
                                      "independent referee; float64 against mpmath")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true",
                   help="leave out the networks beyond the quadrature's stated range")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("bench", help="time generated code against a plain numpy loop")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", default="5", help="timing repeats (1 to 1000)")
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (SpecError, UsageError) as error:
        print(f"symfield: error: {error}", file=sys.stderr)
        return 2
    except GenerationError as error:  # a user's activation that cannot become code
        print(f"symfield: error: activation: {error}", file=sys.stderr)
        return 2
    except ArithmeticError as error:  # NumericalError and friends: a result we cannot give
        print(f"symfield: error: {error}", file=sys.stderr)
        return 3
    except BrokenPipeError:  # `symfield ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
