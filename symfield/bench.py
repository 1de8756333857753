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
        n_rho: int = 50) -> dict[str, Any]:
    """Time the generated ``erf.resnet`` against :func:`baseline_resnet`; a JSON-ready dict.

    Cases: one kernel (``responses=False``) and one kernel with responses against
    the baseline loop, and an ``n_rho`` sweep in one batched call against
    ``n_rho`` baseline calls and ``n_rho`` single generated calls.
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
    return {
        "cases": cases,
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
    return "\n".join(lines)
