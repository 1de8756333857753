"""`symfield bench`: the generated erf ResNet kernel against a plain numpy layer loop.

The baseline is written here, independently of the generated code: the ResNet
erf recursion on full P x P matrices, one ``np.arcsin`` per layer. The bench
checks that both give the same kernel, then times them interleaved and keeps
the minimum over ``repeats`` runs (the machine is small and noisy). Timing
targets are reported, never asserted.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SW2 = 1.25
SB2 = 0.05
RHO = 0.1
RHO_RANGE = (0.05, 1.0)
SINGLE_TARGET = 2.0  # single kernel: baseline / generated >= 2
SWEEP_TARGET = 1.0  # sweep: time per rho / single call <= 1
TOLERANCE = 1e-10  # max |K_generated - K_baseline|


def make_kernel(P: int, dim: int = 20, seed: int = 0) -> np.ndarray:
    """A fixed-seed PSD input kernel X X^T / dim + 0.05, X ~ N(0, 1) of shape (P, dim)."""
    X = np.random.default_rng(seed).standard_normal((P, dim))
    return X @ X.T / dim + 0.05


def baseline_resnet(K0: np.ndarray, rho: float, sw2: float, sb2: float,
                    depth: int) -> np.ndarray:
    """ResNet erf kernel after ``depth`` layers: plain numpy on full P x P matrices."""
    K = np.array(K0, dtype=float)
    for _ in range(depth):
        d = np.diag(K)
        G = (2 / np.pi) * np.arcsin(2 * K / np.sqrt(np.outer(1 + 2 * d, 1 + 2 * d)))
        K = K + rho**2 * (sb2 + sw2 * G)
    return K


def _min_times(fns: Sequence[Callable[[], Any]], repeats: int, label: str,
               names: Sequence[str], progress: bool) -> tuple[list[float], list[Any]]:
    """Run ``fns`` interleaved ``repeats`` times: minimum seconds and last output of each."""
    best = [math.inf] * len(fns)
    outputs: list[Any] = [None] * len(fns)
    for r in range(repeats):
        spent = []
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outputs[i] = fn()
            spent.append(time.perf_counter() - start)
            best[i] = min(best[i], spent[-1])
        if progress:
            parts = ", ".join(f"{n} {_fmt_time(s)}" for n, s in zip(names, spent, strict=True))
            print(f"bench: {label} run {r + 1}/{repeats}: {parts}", file=sys.stderr, flush=True)
    return best, outputs


def _case(name: str, seconds: float, baseline_seconds: float, baseline: str,
          target: float | None) -> dict[str, Any]:
    ratio = baseline_seconds / seconds
    return {"name": name, "seconds": float(seconds), "baseline_seconds": float(baseline_seconds),
            "baseline": baseline, "ratio": float(ratio),
            "target": None if target is None else float(target),
            "met": None if target is None else bool(ratio >= target)}


def run(repeats: int = 5, progress: bool = True, *, P: int = 100, depth: int = 1000,
        n_rho: int = 50, with_optimal: bool = True,
        with_simulate: bool | None = None) -> dict[str, Any]:
    """Time the generated ``erf.resnet`` against :func:`baseline_resnet`; a JSON-ready dict.

    Cases: one kernel (``responses=False``) and one kernel with responses against
    the baseline loop, and an ``n_rho`` sweep in one batched call against
    ``n_rho`` baseline calls and ``n_rho`` single generated calls.
    ``with_simulate`` (default: as ``with_optimal``) adds the Monte Carlo row:
    the kernel-space sampler against the literal-weights sampler.
    """
    from generated import erf

    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    K0 = make_kernel(P)
    rhos = np.linspace(*RHO_RANGE, n_rho)
    kw: dict[str, Any] = {"sw2": SW2, "sb2": SB2, "depth": depth}
    if progress:
        print(f"bench: numpy {np.__version__}, OPENBLAS_CORETYPE="
              f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}, P={P}, L={depth}, "
              f"n_rho={n_rho}, repeats={repeats}", file=sys.stderr, flush=True)

    (t_gen, t_resp, t_base), (out_gen, out_resp, K_base) = _min_times(
        [lambda: erf.resnet(K0, rho=RHO, responses=False, **kw),
         lambda: erf.resnet(K0, rho=RHO, responses=True, **kw),
         lambda: baseline_resnet(K0, RHO, SW2, SB2, depth)],
        repeats, f"single kernel rho={RHO}", ["kernel", "responses", "baseline"], progress)
    diffs = [np.abs(out_gen["K"] - K_base).max(), np.abs(out_resp["K"] - K_base).max()]

    (t_sweep, t_singles, t_base_sweep), (out_sweep, out_singles, K_base_sweep) = _min_times(
        [lambda: erf.resnet(K0, rho=rhos, responses=False, **kw),
         lambda: [erf.resnet(K0, rho=r, responses=False, **kw)["K"] for r in rhos],
         lambda: [baseline_resnet(K0, r, SW2, SB2, depth) for r in rhos]],
        repeats, f"{n_rho}-rho sweep", ["batched", "single calls", "baseline"], progress)
    K_base_sweep = np.stack(K_base_sweep)
    diffs += [np.abs(out_sweep["K"] - K_base_sweep).max(),
              np.abs(np.stack(out_singles) - K_base_sweep).max()]
    max_abs_diff = float(max(diffs))
    if progress:
        print(f"bench: max |K_generated - K_baseline| = {max_abs_diff:.3g}",
              file=sys.stderr, flush=True)

    sweep_over_single = t_sweep / t_singles
    cases = [
        _case(f"kernel, rho={RHO} (responses=False)", t_gen, t_base, "numpy loop",
              SINGLE_TARGET),
        _case(f"kernel + responses, rho={RHO}", t_resp, t_base, "numpy loop (kernel only)",
              None),
        _case(f"{n_rho}-rho sweep, batched vs numpy loops", t_sweep, t_base_sweep,
              f"{n_rho} numpy loops", None),
        _case(f"{n_rho}-rho sweep, batched vs single calls", t_sweep, t_singles,
              f"{n_rho} single generated calls", SWEEP_TARGET),
    ]
    optimal = _optimal_cases(repeats, progress) if with_optimal else {}
    cases += optimal.pop("cases", [])
    if with_optimal if with_simulate is None else with_simulate:
        optimal["simulate"] = simulate_cases(repeats, progress)
        cases += optimal["simulate"].pop("cases")
    return {
        "cases": cases,
        **optimal,
        "sweep_per_rho_over_single": float(sweep_over_single),
        "sweep_per_rho_seconds": {"batched": float(t_sweep / n_rho),
                                  "single": float(t_singles / n_rho),
                                  "baseline": float(t_base_sweep / n_rho)},
        "max_abs_diff": max_abs_diff,
        "tolerance": TOLERANCE,
        "agrees": bool(max_abs_diff < TOLERANCE),
        "config": {"P": P, "depth": depth, "n_rho": n_rho, "repeats": repeats,
                   "rho": RHO, "rho_range": list(RHO_RANGE), "sw2": SW2, "sb2": SB2},
        "numpy": np.__version__,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


OPTIMAL_DEPTHS = (10, 50, 100, 200)
OPTIMAL_TARGET_SECONDS = 1.0     # issue: all four depths, both responses "well under a second"
MAP_TARGET_SECONDS = 10.0        # issue: a 50 x 50 (sw2, sb2) map at L = 100 "in seconds"


def _grid_search(K0: np.ndarray, depth: int, n: int = 2000) -> tuple[float, float]:
    """Baseline for rho*: chi_out on a dense rho grid (one batched call), argmax per entry."""
    from generated import erf

    rhos = np.geomspace(1e-3, 30.0, n) / np.sqrt(depth)
    chi = erf.resnet(K0, rho=rhos, sw2=SW2, sb2=SB2, depth=depth)["chi_out"]
    return float(rhos[np.argmax(chi[:, 0, 0])]), float(rhos[np.argmax(chi[:, 0, 1])])


def _optimal_cases(repeats: int, progress: bool) -> dict[str, Any]:
    """rho* (issue 4): four depths, both responses; and the 50 x 50 hyperparameter map."""
    from .optimal import optimal_rho, optimal_rho_map

    K0 = np.array([[0.05, 0.03], [0.03, 0.05]])
    (t_opt, t_grid), (result, grid) = _min_times(
        [lambda: optimal_rho("erf", SW2, SB2, K0, list(OPTIMAL_DEPTHS)),
         lambda: [_grid_search(K0, d) for d in OPTIMAL_DEPTHS]],
        repeats, "rho* at 4 depths", ["roots of d chi_out/d rho", "dense grid argmax"],
        progress)
    sw2, sb2 = np.meshgrid(np.linspace(0.5, 3.0, 50), np.linspace(0.0, 0.5, 50))
    start = time.perf_counter()
    optimal_rho_map("erf", sw2.ravel(), sb2.ravel(), K0, 100, [(0, 0), (0, 1)])
    t_map = time.perf_counter() - start
    if progress:
        print(f"bench: 50 x 50 rho* map at L=100: {t_map:.2f}s", file=sys.stderr, flush=True)
    grid_gap = max(abs(g[0] - o) / o for g, o in zip(grid, result.rho_star((0, 0)), strict=True))
    return {
        "cases": [
            _case("rho* at L=10,50,100,200, both responses", t_opt, t_grid,
                  "dense 2000-point grid argmax (no derivative)", None),
        ],
        "optimal_rho_seconds": float(t_opt),
        "optimal_rho_target_seconds": OPTIMAL_TARGET_SECONDS,
        "optimal_rho_met": bool(t_opt < OPTIMAL_TARGET_SECONDS),
        "map_50x50_seconds": float(t_map),
        "map_target_seconds": MAP_TARGET_SECONDS,
        "map_met": bool(t_map < MAP_TARGET_SECONDS),
        "grid_search_relative_gap": float(grid_gap),
    }


SIMULATE_TARGET = 50.0  # issue 8: kernel-space sampler >= 50x the literal-weights sampler


def simulate_cases(repeats: int, progress: bool, *, width: int = 500, depth: int = 100,
                   n_init: int = 1000, n_slice: int = 4) -> dict[str, Any]:
    """Monte Carlo, P = 2: the kernel-space sampler on ``n_init`` initializations against
    the literal-weights sampler timed on ``n_slice`` of them and scaled by
    ``n_init / n_slice`` (its cost is linear in the initializations: ``N^2`` normal
    numbers per layer each). Minimum over ``min(repeats, 3)`` interleaved runs."""
    from .simulate import simulate
    from .spec import NetworkSpec

    spec = NetworkSpec("resnet", "erf", SW2, SB2, depth, rho=0.5)
    K0 = np.array([[0.5, 0.3], [0.3, 0.8]])
    (t_kernel, t_slice), _ = _min_times(
        [lambda: simulate(spec, K0, width, n_init, 1),
         lambda: simulate(spec, K0, width, n_slice, 1, method="weights")],
        min(repeats, 3), f"Monte Carlo P=2 L={depth} N={width}",
        [f"kernel-space ({n_init} inits)", f"literal weights ({n_slice} inits)"], progress)
    t_weights = t_slice * n_init / n_slice
    name = (f"Monte Carlo P=2 L={depth} N={width} {n_init} inits, kernel-space vs "
            "literal weights")
    case = _case(name, t_kernel, t_weights,
                 f"literal weights ({n_slice} inits timed, x{n_init // n_slice})",
                 SIMULATE_TARGET)
    return {"cases": [case], "kernel_seconds": float(t_kernel),
            "weights_seconds_scaled": float(t_weights), "weights_slice_inits": n_slice,
            "weights_slice_seconds": float(t_slice), "ratio": case["ratio"],
            "target": SIMULATE_TARGET, "met": case["met"],
            "config": {"P": 2, "depth": depth, "width": width, "inits": n_init,
                       "net": "resnet", "activation": "erf", "rho": 0.5}}


def _fmt_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _yes_no(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def format_table(result: dict[str, Any]) -> str:
    """A text report of :func:`run`'s result."""
    cfg = result["config"]
    coretype = result["openblas_coretype"] or "unset"
    lines = [f"symfield bench: erf ResNet kernel, P={cfg['P']}, L={cfg['depth']}, "
             f"sw2={cfg['sw2']}, sb2={cfg['sb2']}; minimum of {cfg['repeats']} interleaved runs",
             f"numpy {result['numpy']}; OPENBLAS_CORETYPE {coretype}", ""]
    rows = [(c["name"], _fmt_time(c["seconds"]), c["baseline"], _fmt_time(c["baseline_seconds"]),
             f"{c['ratio']:.2f}x", "-" if c["target"] is None else f">= {c['target']:g}x",
             _yes_no(c["met"])) for c in result["cases"]]
    head = ("case", "generated", "baseline", "baseline time", "ratio", "target", "met")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(f"{cell:<{w}}" if i in (0, 2) else f"{cell:>{w}}"
                               for i, (cell, w) in enumerate(cells)).rstrip())
    per = result["sweep_per_rho_seconds"]
    ratio = result["sweep_per_rho_over_single"]
    lines += ["",
              f"sweep, time per rho: batched {_fmt_time(per['batched'])}, single calls "
              f"{_fmt_time(per['single'])}, numpy loop {_fmt_time(per['baseline'])}",
              f"sweep per rho / single call = {ratio:.2f} (target <= {SWEEP_TARGET:g}: "
              f"{_yes_no(ratio <= SWEEP_TARGET)})",
              f"max |K_generated - K_baseline| = {result['max_abs_diff']:.2e} "
              f"(tolerance {result['tolerance']:g}: {'ok' if result['agrees'] else 'FAILED'})"]
    if "optimal_rho_seconds" in result:
        lines += [f"rho* at 4 depths, both responses: {_fmt_time(result['optimal_rho_seconds'])}"
                  f" (target < {result['optimal_rho_target_seconds']:g} s: "
                  f"{_yes_no(result['optimal_rho_met'])}); dense-grid argmax differs by "
                  f"{result['grid_search_relative_gap']:.1e} relative",
                  f"rho* map 50 x 50 at L=100: {_fmt_time(result['map_50x50_seconds'])} "
                  f"(target < {result['map_target_seconds']:g} s: {_yes_no(result['map_met'])})"]
    if "simulate" in result:
        sim = result["simulate"]
        lines.append(f"Monte Carlo: kernel-space {_fmt_time(sim['kernel_seconds'])}, literal "
                     f"weights {_fmt_time(sim['weights_seconds_scaled'])} (scaled from "
                     f"{sim['weights_slice_inits']} inits): {sim['ratio']:.0f}x (target >= "
                     f"{sim['target']:g}x: {_yes_no(sim['met'])})")
    return "\n".join(lines)
