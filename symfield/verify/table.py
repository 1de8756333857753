"""`symfield verify`: the generated code and the mpmath path against a referee.

Two kinds of rows:

* **referee** (:mod:`symfield.verify.reference`): an independent computation
  from the network's definition (direct Gaussian integrals of phi, the typed
  recursion, numerical derivatives) that shares no derived expression with the
  code. Three paths are compared with it on :data:`CASES` (every family, both
  nets, hard points): the committed ``generated/`` modules, modules generated
  now from the current derivation (only when their code differs from the
  committed one), and the derived mpmath path :func:`propagate_mp`. This is
  what catches a wrong derivation.
* **rounding**: the generated float64 routines against the mpmath path at 30
  digits on hard points (closed forms to 12 digits, or backward stable where
  the problem is ill-conditioned). Both sides lambdify the same derived
  expressions, so these rows check the numerics, not the derivation.
"""

from __future__ import annotations

import functools
import importlib
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import mpmath
import numpy as np

from ..activations import BUILTIN, resolve
from ..kernel import compute, import_path, load_module
from ..precision import mp_expectations, propagate_mp
from ..spec import NetworkSpec
from .reference import RESPONSE_FLOOR, NetworkReference, Referee

DPS = 30
CLOSED_FORM_DIGITS = 12
EXACT = ("erf", "relu", "leaky_relu:0.2", "abs", "linear")
ONE_MINUS = 1.0 - 1e-12

#: (K_aa, K_bb, K_ab): generic, |c| = 1 exactly, |c| = 1 - 1e-12, variances near 0.
PAIR_POINTS: tuple[tuple[float, float, float], ...] = (
    (0.3, 0.7, 0.2), (1.0, 1.0, -0.7), (50.0, 2.0, 9.0),
    (0.4, 0.4, 0.4), (0.25, 1.0, 0.5), (0.25, 1.0, -0.5),
    (1.0, 1.0, ONE_MINUS), (0.3, 0.3, 0.3 * ONE_MINUS), (1.0, 1.0, -ONE_MINUS),
    (2.0, 0.5, ONE_MINUS), (1e-8, 1e-8, 0.5e-8), (1e-8, 1.0, 0.5e-4), (1e-6, 1e-6, 1e-6),
)
DIAG_POINTS = (1e-10, 1e-4, 0.05, 0.3, 1.0, 3.0, 1e3)

_K0_GENERIC = [[0.05, 0.03], [0.03, 0.05]]
_K0_ALIGNED = [[0.05, 0.05 * ONE_MINUS], [0.05 * ONE_MINUS, 0.05]]
_K0_THREE = [[1.0, 0.6, -0.2], [0.6, 0.8, 0.1], [-0.2, 0.1, 0.5]]

#: (label, spec, K0): networks propagated by both paths.
NETWORKS: tuple[tuple[str, NetworkSpec, list], ...] = (
    ("resnet erf L=1", NetworkSpec("resnet", "erf", 1.25, 0.05, 1, rho=0.1), _K0_GENERIC),
    ("resnet erf L=100", NetworkSpec("resnet", "erf", 1.25, 0.05, 100, rho=0.1), _K0_GENERIC),
    ("resnet erf L=10^4", NetworkSpec("resnet", "erf", 1.25, 0.05, 10_000, rho=0.1),
     _K0_GENERIC),
    ("resnet erf c=1-1e-12", NetworkSpec("resnet", "erf", 1.25, 0.05, 100, rho=0.3),
     _K0_ALIGNED),
    ("ffnet erf L=100", NetworkSpec("ffnet", "erf", 1.8, 0.05, 100), _K0_THREE),
    ("resnet relu c=1-1e-12", NetworkSpec("resnet", "relu", 2.0, 0.1, 100, rho=0.2),
     _K0_ALIGNED),
    ("ffnet relu L=100", NetworkSpec("ffnet", "relu", 2.0, 0.0, 100), _K0_THREE),
    ("ffnet leaky_relu:0.2", NetworkSpec("ffnet", "leaky_relu:0.2", 1.5, 0.1, 30), _K0_THREE),
    ("resnet abs L=50", NetworkSpec("resnet", "abs", 1.0, 0.1, 50, rho=0.3), _K0_THREE),
    ("ffnet linear L=10", NetworkSpec("ffnet", "linear", 1.1, 0.2, 10), _K0_THREE),
)


def relative_errors(values: np.ndarray, references: Sequence,
                    floor: float | np.ndarray = 0.0) -> np.ndarray:
    """|value - ref| / max(|ref|, floor); where both vanish the absolute error."""
    ref = np.array([float(r) for r in np.ravel(np.array(references, dtype=object))])
    val = np.ravel(np.asarray(values, dtype=float))
    exact_mp = [mpmath.mpf(r) for r in np.ravel(np.array(references, dtype=object))]
    diff = np.array([float(abs(mpmath.mpf(v) - r)) for v, r in zip(val, exact_mp, strict=True)])
    scale = np.maximum(np.abs(ref), np.ravel(np.broadcast_to(floor, np.shape(values))))
    return np.where(scale > 0, diff / np.where(scale > 0, scale, 1.0), diff)


def _row(routine: str, kind: str, points: int, errors: np.ndarray, required: float,
         seconds: float) -> dict:
    worst = float(np.max(errors)) if errors.size else 0.0
    digits = -math.log10(worst) if worst > 0 else float(DPS)
    return {"routine": routine, "kind": kind, "points": points, "worst_rel_err": worst,
            "digits": min(digits, float(DPS)), "required_rel_err": required,
            "ok": bool(worst <= required), "seconds": seconds}


def moment_rows(names: Sequence[str], pair_points: Sequence, diag_points: Sequence,
                dps: int = DPS, log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Generated pair/diag moment functions against the mpmath moments."""
    rows = []
    for name in names:
        activation = resolve(name)
        module = load_module(activation)
        params = activation.param_values
        quadrature = module.KIND == "quadrature"
        required = module.STATED_ACCURACY if quadrature else 10.0 ** -CLOSED_FORM_DIGITS
        reference = mp_expectations(activation, dps)
        start = time.perf_counter()
        qa, qb, k = (np.array(c) for c in zip(*pair_points, strict=True))
        ours = module.pair_expectations(qa, qb, k, **params)
        with mpmath.workdps(dps):
            refs = [reference.pair(mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(c))
                    for a, b, c in pair_points]
            # Cauchy-Schwarz scale of G: |G_ab| <= sqrt(G_d(K_aa) G_d(K_bb))
            bound = np.array([float(mpmath.sqrt(abs(reference.diag(mpmath.mpf(a))[0]
                                                    * reference.diag(mpmath.mpf(b))[0])))
                              for a, b, _ in pair_points])
        for index, key in enumerate(("G", "G_k", "G_qa", "G_qb")):
            column = [r[index] for r in refs]
            floor = 1e-3 * max(float(abs(v)) for v in column) if quadrature else 0.0
            errors = relative_errors(ours[key], column,
                                     np.maximum(floor, bound) if key == "G" else floor)
            rows.append(_row(f"{module.FAMILY}.pair {key}" + _param_label(params),
                             module.KIND, len(pair_points), errors, required,
                             time.perf_counter() - start))
        log(f"  {name}: pair moments done")
        q = np.array(diag_points)
        ours = module.diag_expectations(q, **params)
        with mpmath.workdps(dps):
            refs = [reference.diag(mpmath.mpf(v)) for v in diag_points]
        for index, key in enumerate(("G_d", "G_d_q")):
            column = [r[index] for r in refs]
            floor = 1e-3 * max(float(abs(v)) for v in column) if quadrature else 0.0
            rows.append(_row(f"{module.FAMILY}.diag {key}" + _param_label(params), module.KIND,
                             len(diag_points), relative_errors(ours[key], column, floor),
                             required, time.perf_counter() - start))
    return rows


def _param_label(params: dict) -> str:
    return "".join(f" [{k}={v:g}]" for k, v in sorted(params.items()))


def network_rows(networks: Sequence, dps: int = DPS,
                 log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Whole propagations (K, K_out, chi, chi_out, tensor) against propagate_mp."""
    rows = []
    for label, spec, K0 in networks:
        activation = resolve(spec.activation)
        module = load_module(activation)
        quadrature = module.KIND == "quadrature"
        required = module.STATED_ACCURACY if quadrature else 10.0 ** -CLOSED_FORM_DIGITS
        start = time.perf_counter()
        kwargs = dict(sw2=spec.sw2, sb2=spec.sb2, depth=spec.depth, sw2_out=spec.sw2_out,
                      sb2_out=spec.sb2_out, tensor=True, **activation.param_values)
        if spec.rho is not None:
            kwargs["rho"] = spec.rho
        ours = module.NETS[spec.net](np.array(K0), **kwargs)
        exact_K0 = [[mpmath.mpf(v) for v in row] for row in K0]
        with mpmath.workdps(dps):
            refs = propagate_mp(spec, exact_K0, dps=dps, tensor=True)
        errors = np.concatenate([network_errors(ours, refs, key) for key in NETWORK_KEYS])
        row = _row(f"{module.FAMILY}.{spec.net} [{label}]", module.KIND, errors.size, errors,
                   required, time.perf_counter() - start)
        if not row["ok"] and not quadrature:
            # the exact answer may not be representable to 12 digits from float64 inputs:
            # measure the condition number and require backward stability instead
            kappa = condition_number(spec, exact_K0, refs, dps)
            row["condition"] = kappa
            row["required_rel_err"] = max(required, STABILITY_FACTOR * kappa * UNIT_ROUNDOFF)
            row["ok"] = bool(row["worst_rel_err"] <= row["required_rel_err"])
        rows.append(row)
        log(f"  {label}: done ({time.perf_counter() - start:.1f}s)")
    return rows


NETWORK_KEYS = ("K", "K_out", "chi", "chi_out", "response_tensor", "response_tensor_out")
UNIT_ROUNDOFF = 2.0**-53
STABILITY_FACTOR = 100.0


def network_errors(ours: dict, refs: dict, key: str) -> np.ndarray:
    """Kernels: error relative to the kernel scale sqrt(K_aa K_bb) (normwise, so an entry
    that is near 0 by cancellation is not held to relative accuracy); responses: relative."""
    if key not in ("K", "K_out"):
        return relative_errors(ours[key], refs[key])
    diag = np.array([float(refs[key][a][a]) for a in range(len(refs[key]))])
    return relative_errors(ours[key], refs[key], np.sqrt(np.abs(np.outer(diag, diag))))


def condition_number(spec: NetworkSpec, K0: list, refs: dict, dps: int,
                     step: str = "1e-25") -> float:
    """Relative condition number of all outputs w.r.t. relative changes of K0's entries.

    Each independent entry of K0 is perturbed by a relative ``step`` in mpmath (at
    ``dps + 15`` digits) and the largest relative output change per unit step is taken.
    """
    size = len(K0)
    worst = 0.0
    with mpmath.workdps(dps + 15):
        delta = mpmath.mpf(step)
        for a in range(size):
            for b in range(a, size):
                moved = [list(row) for row in K0]
                moved[a][b] = moved[b][a] = K0[a][b] * (1 + delta)
                other = propagate_mp(spec, moved, dps=dps + 15, tensor=True)
                for key in NETWORK_KEYS:
                    base = np.ravel(np.array(refs[key], dtype=object))
                    new = np.ravel(np.array(other[key], dtype=object))
                    for x, y in zip(base, new, strict=True):
                        scale = max(abs(x), mpmath.mpf(10) ** (-dps))
                        worst = max(worst, float(abs(y - x) / scale / delta))
    return worst


def format_table(rows: list[dict]) -> str:
    """routine | kind | points | worst rel. error | digits | required | ref. error or
    condition | worst quantity | ok."""
    width = max(len(r["routine"]) for r in rows)
    lines = [f"{'routine':<{width}}  {'kind':<14}  {'points':>6}  {'worst rel err':>13}  "
             f"{'digits':>6}  {'required':>9}  {'ref err':>9}  {'condition':>9}  "
             f"{'worst in':<19}  ok"]
    for r in rows:
        kappa = f"{r['condition']:9.1e}" if "condition" in r else f"{'-':>9}"
        ref = f"{r['reference_err']:9.1e}" if "reference_err" in r else f"{'-':>9}"
        lines.append(f"{r['routine']:<{width}}  {r['kind']:<14}  {r['points']:>6}  "
                     f"{r['worst_rel_err']:>13.3e}  {r['digits']:>6.1f}  "
                     f"{r['required_rel_err']:>9.0e}  {ref}  {kappa}  "
                     f"{r.get('worst_key', '-'):<19}  {'yes' if r['ok'] else 'NO'}")
    lines.append(
        "referee rows: each path against an independent reference computed from the network's"
        " definition (direct Gaussian integrals of phi, the typed recursion, numerical"
        " derivatives; 'ref err' is its own error estimate, required to be"
        f" {REFERENCE_MARGIN:g}x below the tolerance). Tolerances: generated closed forms"
        f" {TOL_GENERATED_EXACT:g}, generated quadrature {QUADRATURE_FACTOR:g}x its stated"
        f" accuracy ({QUADRATURE_FACTOR_DRHO:g}x for d/d rho), mpmath path {TOL_MP:g}."
        " 'referee beyond': quadrature families beyond their stated variance range.")
    lines.append("rounding rows: generated float64 vs the mpmath path at 30 digits (same"
                 " derived expressions). Kernels (K, K_out, pair G) are compared relative to"
                 " their scale sqrt(K_aa K_bb); responses relative to their value. Where a"
                 " closed-form row misses 12 digits the condition number is measured and the"
                 " float64 code must be backward stable"
                 f" (error <= {STABILITY_FACTOR:g} x condition x 2^-53).")
    failed = [r for r in rows if not r["ok"]]
    beyond = sum(bool(r.get("beyond")) for r in failed)
    seconds = max((r.get("total_seconds", 0.0) for r in rows), default=0.0)
    lines.append(f"{len(rows) - len(failed)} passed, {len(failed)} failed"
                 + (f" ({beyond} of them beyond the stated quadrature range)" if beyond else "")
                 + (f"; {seconds:.0f}s" if seconds else ""))
    return "\n".join(lines)


# -- the referee: both paths against the independent reference ---------------------------
#: Tolerances (relative; kernels normwise against sqrt(K_aa K_bb), responses against
#: their value with a floor of RESPONSE_FLOOR x the largest entry of the same quantity).
TOL_GENERATED_EXACT = 1e-9
TOL_MP = 1e-10
#: Quadrature families: this many times the module's STATED_ACCURACY (per moment);
#: d/d rho uses second-derivative moments, stated separately only at build time.
QUADRATURE_FACTOR = 10.0
QUADRATURE_FACTOR_DRHO = 1000.0
#: The reference's own error estimate must stay this far below the tolerance.
REFERENCE_MARGIN = 10.0
#: Digits of the mpmath path in referee rows (quadrature families: fewer, they are slow).
MP_DPS = 30
MP_DPS_QUADRATURE = 16

ALL_FAMILIES = ("erf", "relu", "leaky_relu:0.2", "abs", "linear", "tanh", "gelu", "silu")
_ONE_MINUS = 1.0 - 2.0**-40  # a correlation 1 - 9e-13, exact in binary and decimal
_K0_A = ((0.375, 0.125), (0.125, 0.25))
_K0_B = ((0.25, -0.125), (-0.125, 0.3125))
_K0_ALIGNED = ((0.25, 0.25 * _ONE_MINUS), (0.25 * _ONE_MINUS, 0.25))
_K0_ANTI = ((0.25, -0.25 * _ONE_MINUS), (-0.25 * _ONE_MINUS, 0.25))
_K0_TINY = ((2.0**-30, 2.0**-32), (2.0**-32, 2.0**-31))
_K0_LARGE = ((256.0, 64.0), (64.0, 128.0))
_K0_P3 = ((0.5, 0.25, -0.125), (0.25, 0.375, 0.0625), (-0.125, 0.0625, 0.25))


@dataclass(frozen=True)
class Case:
    """A network for the referee. ``checks``: 'kernel' (K, K_out), 'chi' (+ chi,
    chi_out), 'tensor' (+ the response tensors), 'drho' (+ dK/d rho, d chi_out/d rho).
    ``beyond``: the network leaves the quadrature's stated range (reported apart)."""

    label: str
    spec: NetworkSpec
    K0: tuple[tuple[float, ...], ...]
    checks: str
    beyond: bool = False


def _resnet(act: str, depth: int = 2, rho: float = 0.25, sw2: float = 1.25,
            sb2: float = 0.0625) -> NetworkSpec:
    return NetworkSpec("resnet", act, sw2, sb2, depth, rho=rho, sw2_out=1.5, sb2_out=0.125)


def _ffnet(act: str, depth: int = 2, sw2: float = 1.25, sb2: float = 0.0625) -> NetworkSpec:
    return NetworkSpec("ffnet", act, sw2, sb2, depth, sw2_out=0.75, sb2_out=0.0625)


CASES: tuple[Case, ...] = (
    *(c for act in ALL_FAMILIES for c in (
        Case(f"resnet {act} L=2", _resnet(act), _K0_A, "drho"),
        Case(f"ffnet {act} L=2", _ffnet(act), _K0_B, "tensor"))),
    # three inputs: the tensor's bookkeeping over several pairs
    Case("ffnet relu P=3 L=1", _ffnet("relu", depth=1, sw2=2.0), _K0_P3, "tensor"),
    # correlations 1 - 9e-13 and -(1 - 9e-13)
    Case("resnet relu c=1-2^-40", _resnet("relu", rho=0.5, sw2=2.0), _K0_ALIGNED, "chi"),
    Case("ffnet erf c=-(1-2^-40)", _ffnet("erf"), _K0_ANTI, "chi"),
    Case("ffnet tanh c=1-2^-40 L=1", _ffnet("tanh", depth=1), _K0_ALIGNED, "chi"),
    # variances near 0 (no bias: they stay small)
    Case("resnet erf K~1e-9", _resnet("erf", sb2=0.0), _K0_TINY, "drho"),
    Case("ffnet relu K~1e-9", _ffnet("relu", sw2=2.0, sb2=0.0), _K0_TINY, "tensor"),
    # large variances, deep ResNets
    Case("resnet relu K~256 L=4", _resnet("relu", depth=4, rho=0.5, sw2=2.0), _K0_LARGE, "drho"),
    Case("resnet erf q=256 L=10", _resnet("erf", depth=10, rho=0.5), ((256.0,),), "drho"),
    Case("resnet erf L=100", _resnet("erf", depth=100, rho=0.125), ((0.0625,),), "drho"),
    Case("resnet relu L=50", _resnet("relu", depth=50, rho=0.125, sw2=2.0), ((0.5,),), "drho"),
    Case("resnet relu L=10 P=2", _resnet("relu", depth=10, rho=0.25, sw2=2.0), _K0_B, "chi"),
    Case("resnet tanh q=2 L=25", _resnet("tanh", depth=25, rho=0.125), ((2.0,),), "drho"),
    # quadrature families beyond their stated range (variance 4): q = 16 and 10^4
    *(Case(f"ffnet {act} q={q:g} L=1", _ffnet(act, depth=1), ((q,),), "chi", beyond=True)
      for act in ("tanh", "gelu", "silu") for q in (16.0, 1e4)),
)


#: A cheap slice for the default test suite (a few seconds): a closed-form family
#: through the kernel, the response tensor and d/d rho, a quadrature family through
#: the tensor; the derivation is regenerated for both.
SLICE_CASES: tuple[Case, ...] = (
    Case("resnet relu L=1", _resnet("relu", depth=1), _K0_A, "drho"),
    Case("ffnet tanh L=1", _ffnet("tanh", depth=1), _K0_B, "tensor"),
)


def referee_slice(log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """SLICE_CASES against the committed modules, modules generated now from the
    current derivation and the mpmath path (which derives at run time)."""
    families = sorted({resolve(c.spec.activation).family.name for c in SLICE_CASES})
    return referee_rows(SLICE_CASES, derived=derived_modules(families), log=log)


@functools.lru_cache(maxsize=16)
def referee(activation: str) -> Referee:
    """One reference object per activation (its Gaussian moments are cached)."""
    return Referee(activation)


def _load_text(text: str, name: str) -> ModuleType:
    """Import generated module text from a temporary file (never eval)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.py"
        path.write_text(text)
        return import_path(path, f"symfield_referee_{name}")


def _body(text: str) -> str:
    """Module text without the lines that name its source and spec hash."""
    return "\n".join(line for line in text.splitlines()
                     if not line.startswith(("Generated by symfield", "Spec hash")))


def derived_modules(families: Sequence[str] | None = None) -> dict[str, ModuleType | None]:
    """family -> a module generated now from the current derivation, or None where
    its code is identical to the committed generated/<family>.py."""
    from ..activations import FAMILIES
    from ..pipeline import module_text

    out: dict[str, ModuleType | None] = {}
    for name in families or BUILTIN:
        text = module_text(FAMILIES[name])
        committed = Path(importlib.import_module(f"generated.{name}").__file__ or "")
        same = committed.exists() and _body(committed.read_text()) == _body(text)
        out[name] = None if same else _load_text(text, name)
    return out


def _errors(ours: object, ref: list, key: str) -> np.ndarray:
    """Normwise for kernels, relative with a floor for responses."""
    values = np.asarray(ours, dtype=float)
    if key in ("K", "K_out"):
        diag = np.array([float(ref[a][a]) for a in range(len(ref))])
        return relative_errors(values, ref, np.sqrt(np.abs(np.outer(diag, diag))))
    flat = np.array([float(v) for v in np.ravel(np.array(ref, dtype=object))])
    floor = RESPONSE_FLOOR * float(np.max(np.abs(flat))) if flat.size else 0.0
    return relative_errors(values, ref, floor)


def _keys(checks: str) -> tuple[str, ...]:
    keys = ["K", "K_out"]
    if checks != "kernel":
        keys += ["chi", "chi_out"]
    if checks in ("tensor", "drho"):
        keys += ["response_tensor", "response_tensor_out"]
    if checks == "drho":
        keys += ["dK_drho", "dchi_out_drho"]
    return tuple(keys)


def _generated_values(module: ModuleType, case: Case) -> dict:
    activation = resolve(case.spec.activation)
    spec = case.spec
    kwargs = dict(sw2=spec.sw2, sb2=spec.sb2, depth=spec.depth, sw2_out=spec.sw2_out,
                  sb2_out=spec.sb2_out, **activation.param_values)
    if spec.rho is not None:
        kwargs["rho"] = spec.rho
    K0 = np.array(case.K0, dtype=float)
    tensor = case.checks in ("tensor", "drho")
    with np.errstate(all="ignore"):
        if module is load_module(activation):  # the committed code, as users call it
            values = compute(spec, K0, tensor=tensor)
        else:
            values = dict(module.NETS[spec.net](K0, tensor=tensor, **kwargs))
        if case.checks == "drho":
            values.update({k: v for k, v in module.resnet_drho(K0, **kwargs).items()
                           if k in ("dK_drho", "dchi_out_drho")})
    return values


def _compare(values: dict, ref: NetworkReference, keys: Sequence[str]
             ) -> tuple[np.ndarray, str, dict[str, float]]:
    per_key = {key: _errors(values[key], ref.values[key], key) for key in keys}
    worst = {key: float(np.max(e)) if e.size else 0.0 for key, e in per_key.items()}
    worst = {k: (v if math.isfinite(v) else math.inf) for k, v in worst.items()}
    worst_key = max(worst, key=lambda k: worst[k])
    return np.concatenate([np.ravel(e) for e in per_key.values()]), worst_key, worst


def _referee_row(case: Case, path: str, values: dict, ref: NetworkReference,
                 tolerance: float, seconds: float) -> dict:
    keys = _keys(case.checks)
    errors, worst_key, per_key = _compare(values, ref, keys)
    reference_error = max(ref.error[k] for k in keys)
    worst = float(np.max(errors)) if np.all(np.isfinite(errors)) else math.inf
    row = _row(f"{case.label} [{path}]", "referee" + (" beyond" if case.beyond else ""),
               errors.size, np.array([worst]), tolerance, seconds)
    row.update(worst_key=worst_key, per_key=per_key, reference_err=reference_error,
               reference_dps=ref.dps, beyond=case.beyond,
               ok=bool(worst <= tolerance and reference_error * REFERENCE_MARGIN <= tolerance))
    return row


def _crashed_row(case: Case, path: str, error: Exception, tolerance: float) -> dict:
    row = _row(f"{case.label} [{path}]", "referee" + (" beyond" if case.beyond else ""),
               0, np.array([math.inf]), tolerance, 0.0)
    row.update(worst_key=f"raised {type(error).__name__}", per_key={}, error=str(error),
               reference_err=0.0, beyond=case.beyond, ok=False)
    return row


def generated_tolerance(module: ModuleType, checks: str) -> float:
    if module.KIND != "quadrature":
        return TOL_GENERATED_EXACT
    factor = QUADRATURE_FACTOR_DRHO if checks == "drho" else QUADRATURE_FACTOR
    return max(TOL_GENERATED_EXACT, factor * float(module.STATED_ACCURACY))


def referee_rows(cases: Sequence[Case] = CASES, *, committed: bool = True,
                 derived: dict[str, ModuleType | None] | None = None, mp_path: bool = True,
                 log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Each case: the reference, then every path compared with it (one row per path).

    ``derived`` maps a family to a module generated now (None: same code as committed).
    """
    rows = []
    for case in cases:
        activation = resolve(case.spec.activation)
        family = activation.family.name
        start = time.perf_counter()
        ref = referee(case.spec.activation).network(
            case.spec, case.K0, derivatives=case.checks != "kernel",
            tensor=case.checks in ("tensor", "drho"), drho=case.checks == "drho")
        paths: list[tuple[str, ModuleType]] = []
        if committed:
            paths.append((f"generated/{family}.py", load_module(activation)))
        fresh = (derived or {}).get(family)
        if fresh is not None:
            paths.append((f"{family} derived now", fresh))
        for path, module in paths:
            tick = time.perf_counter()
            tolerance = generated_tolerance(module, case.checks)
            try:
                values = _generated_values(module, case)
            except Exception as error:  # noqa: BLE001 - a crash is a failed row, not a stop
                rows.append(_crashed_row(case, path, error, tolerance))
                continue
            rows.append(_referee_row(case, path, values, ref, tolerance,
                                     time.perf_counter() - tick))
        if mp_path:
            tick = time.perf_counter()
            quadrature = load_module(activation).KIND == "quadrature"
            dps = MP_DPS_QUADRATURE if quadrature else MP_DPS
            exact_K0 = [[mpmath.mpf(v) for v in row] for row in case.K0]
            values = propagate_mp(case.spec, exact_K0, dps=dps,
                                  tensor=case.checks in ("tensor", "drho"))
            keys = [k for k in _keys(case.checks) if k in values]
            row = _referee_row(Case(case.label, case.spec, case.K0,
                                    "tensor" if "response_tensor" in keys else case.checks,
                                    case.beyond),
                               f"mpmath {dps} digits", values, ref, TOL_MP,
                               time.perf_counter() - tick)
            rows.append(row)
        log(f"  {case.label}: reference {ref.seconds:.1f}s (error {max(ref.error.values()):.0e},"
            f" {ref.dps} digits), all paths {time.perf_counter() - start:.1f}s"
            + "".join(f"; {r['routine'].split('[')[-1][:-1]} "
                      f"{'ok' if r['ok'] else 'FAILED'}" for r in rows[-len(paths) - mp_path:]))
    return rows


def run_verify(*, quick: bool = False, progress: bool = True,
               cases: Sequence[Case] | None = None) -> list[dict]:
    """All rows: the referee on ``CASES`` (generated, derived now, mpmath path) and the
    rounding rows (generated vs mpmath at 30 digits). ``quick`` leaves out the cases
    beyond the stated range of the quadrature and the 10^4-layer rounding row."""
    def log(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    log("verify: generating every built-in family from the current derivation")
    derived = derived_modules()
    changed = sorted(n for n, m in derived.items() if m is not None)
    log("  committed generated/ code " + (f"differs for {', '.join(changed)}: both are "
                                          "refereed" if changed else "matches the derivation"))
    selected = [c for c in (CASES if cases is None else cases) if not (quick and c.beyond)]
    log(f"verify: referee, {len(selected)} networks (independent reference from the "
        "definition; generated and mpmath paths against it)")
    rows = referee_rows(selected, derived=derived, log=log)
    log(f"verify: rounding, generated float64 vs mpmath at {DPS} digits")
    rows += moment_rows(EXACT, PAIR_POINTS, DIAG_POINTS, log=log)
    rows += network_rows([n for n in NETWORKS if not (quick and n[1].depth > 1000)], log=log)
    seconds = time.perf_counter() - start
    for row in rows:
        row["total_seconds"] = seconds
    log(f"verify: {seconds:.0f}s")
    return rows
