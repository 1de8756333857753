"""Monte Carlo of finite-width networks at initialization (THEORY.md sections 1-2).

The networks start from the input kernel: ``h^(0)_i ~ N(0, K0)`` i.i.d. over
the ``N`` neurons, then ``L`` hidden layers (FFNet or ResNet) and the readout.
Per initialization we record the empirical kernels
``K_hat^(l)_ab = (1/N) sum_i h^(l)_ia h^(l)_ib`` (``l = 0..L``) and the
auxiliary fields ``C^(l)_ab = sb2 + (sw2/N) sum_i phi(h^(l-1)_ia) phi(h^(l-1)_ib)``
(``l = 1..L``) plus the readout field ``C_out`` (with ``sb2_out``, ``sw2_out``),
whose mean is the output kernel ``K_out = E[y_a y_b]``.

Two samplers give the same distribution:

* ``method="weights"`` draws the weight matrices ``W^(l)`` (``N x N``) and biases
  and multiplies them out, literally as in THEORY.md section 1;
* ``method="kernel"`` (default) uses that ``W^(l)`` and ``b^(l)`` are fresh at
  every layer: given ``h^(l-1)``, the rows ``W_i phi(h^(l-1)) + b_i`` are i.i.d.
  Gaussian vectors over the ``P`` inputs with covariance exactly ``C^(l)``, so
  ``h^(l)`` is sampled from ``N(0, C^(l))`` per neuron. This is exact at any
  ``N`` (no large-width approximation) and costs ``N P`` instead of ``N^2``
  normal numbers per layer; the test suite checks it against the literal sampler.

Every initialization has its own random stream, spawned from
``SeedSequence(seed)`` and fed to ``Generator(PCG64(...))``, so results depend
only on ``(spec, K0, width, seed, method)`` and not on the batch size, and the
first ``k`` initializations are the same for every ``n_init >= k``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sympy as sp

from .activations import Activation, resolve
from .gaussian import X
from .spec import NetworkSpec, SpecError, check_kernel

try:  # scipy is optional; when present it supplies a fast vectorised erf (and more)
    from scipy import special as _scipy_special
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_special = None

#: The samplers :func:`simulate` knows (see the module docstring).
METHODS: tuple[str, ...] = ("kernel", "weights")

#: Floats per batch tensor the automatic batch size aims at (about 32 MB).
_BATCH_FLOATS = 1 << 22

ArrayFunction = Callable[[np.ndarray], np.ndarray]


def _heaviside(x: np.ndarray, h0: float = 0.5) -> np.ndarray:
    """Heaviside step with value ``h0`` at 0 (SymPy's default is 1/2)."""
    return np.heaviside(x, h0)


def _erf_fallback(x: np.ndarray) -> np.ndarray:
    """erf without scipy: ``math.erf`` elementwise (slower, exact to double precision)."""
    return np.frompyfunc(math.erf, 1, 1)(np.asarray(x, dtype=float)).astype(float)


_erf: ArrayFunction = _scipy_special.erf if _scipy_special is not None else _erf_fallback


def activation_function(activation: str | Activation) -> ArrayFunction:
    """A numpy-vectorised ``phi`` from the activation's SymPy expression.

    ``activation`` is a name for :func:`symfield.activations.resolve` or a
    resolved :class:`Activation`; family parameters are substituted by value.
    erf comes from ``scipy.special`` when scipy is installed (else ``math.erf``).
    """
    act = resolve(activation) if isinstance(activation, str) else activation
    values = act.param_values
    missing = [p.name for p in act.family.params if p.name not in values]
    if missing:
        raise SpecError("activation", act.label or act.family.name,
                        f"needs values for the parameters {', '.join(missing)}")
    phi = act.family.phi.subs({p: values[p.name] for p in act.family.params})
    modules: list[object] = [{"Heaviside": _heaviside, "erf": _erf}]
    if _scipy_special is not None:
        modules.append("scipy")
    modules.append("numpy")
    raw = sp.lambdify(X, phi, modules=modules)

    def phi_numpy(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        out = np.asarray(raw(x), dtype=float)
        if out.shape != x.shape:  # a constant expression
            out = np.broadcast_to(out, x.shape).copy()
        return out

    phi_numpy.__doc__ = f"phi(x) = {sp.sstr(phi)} (numpy)"
    return phi_numpy


@dataclass(frozen=True)
class MonteCarloResult:
    """Means and standard errors (over initializations) of the empirical kernels.

    ``K_*`` has shape ``(L+1, P, P)`` for ``K_hat^(0..L)``. ``C_*`` has shape
    ``(L+1, P, P)``: index ``l-1`` holds ``C^(l)`` (``l = 1..L``), index ``L``
    the readout field ``C_out``; ``K_out_*`` repeats that last entry. Standard
    errors are ``std(ddof=1) / sqrt(n_init)``. ``C_samples`` / ``K_samples``
    (``(n_init, L+1, P, P)``, same layouts) are kept only with ``keep_samples``.
    """

    K_mean: np.ndarray
    K_stderr: np.ndarray
    C_mean: np.ndarray
    C_stderr: np.ndarray
    K_out_mean: np.ndarray
    K_out_stderr: np.ndarray
    width: int
    n_init: int
    seed: int
    method: str
    K0: np.ndarray
    spec: NetworkSpec
    elapsed: float = 0.0
    C_samples: np.ndarray | None = None
    K_samples: np.ndarray | None = None

    @property
    def depth(self) -> int:
        return self.K_mean.shape[0] - 1

    def field_labels(self) -> list[str]:
        """Labels of the ``C`` entries: ``C^(1)``, ..., ``C^(L)``, ``C_out``."""
        return [f"C^({layer})" for layer in range(1, self.depth + 1)] + ["C_out"]


class _Moments:
    """Running mean and sum of squared deviations, merged batch-wise (Chan et al.)."""

    def __init__(self, shape: tuple[int, ...]):
        self.count = 0
        self.mean = np.zeros(shape)
        self.m2 = np.zeros(shape)

    def add(self, batch: np.ndarray) -> None:
        size = batch.shape[0]
        batch_mean = batch.mean(axis=0)
        batch_m2 = ((batch - batch_mean) ** 2).sum(axis=0)
        total = self.count + size
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (size / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * size / total)
        self.count = total

    def stderr(self) -> np.ndarray:
        return np.sqrt(self.m2 / (self.count - 1) / self.count)


def _gram(a: np.ndarray) -> np.ndarray:
    """``sum_i a_ia a_ib`` for a batch ``(b, N, P)``, symmetrised, shape ``(b, P, P)``."""
    g = np.matmul(np.swapaxes(a, -1, -2), a)
    return 0.5 * (g + np.swapaxes(g, -1, -2))


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of (a batch of) PSD matrices; tiny negative eigenvalues clipped."""
    w, v = np.linalg.eigh(c)
    root = np.sqrt(np.clip(w, 0.0, None))
    return np.matmul(v * root[..., None, :], np.swapaxes(v, -1, -2))


def _check_count(name: str, value: object, minimum: int) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(name, value, f"must be an integer >= {minimum}") from None
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise SpecError(name, value, f"must be an integer >= {minimum}")
    return int(number)


def _auto_batch(method: str, width: int, depth: int, n_inputs: int) -> int:
    per_init = width * width if method == "weights" else width * n_inputs * (depth + 1)
    return max(1, _BATCH_FLOATS // per_init)


def _run_batch(spec: NetworkSpec, phi: ArrayFunction, sqrt_k0: np.ndarray,
               gens: Sequence[np.random.Generator], width: int,
               method: str) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one batch; returns ``K`` and ``C`` of shape ``(b, L+1, P, P)``."""
    size, depth, n_inputs = len(gens), spec.depth, sqrt_k0.shape[0]
    K = np.empty((size, depth + 1, n_inputs, n_inputs))
    C = np.empty_like(K)
    noise = np.empty((size, width, n_inputs))
    literal = method == "weights"
    weights = np.empty((size, width, width)) if literal else noise
    biases = np.empty((size, width)) if literal else noise[:, :, 0]

    def draw(out: np.ndarray) -> np.ndarray:
        for gen, row in zip(gens, out, strict=True):
            gen.standard_normal(out=row)
        return out

    h = draw(noise) @ sqrt_k0
    K[:, 0] = _gram(h) / width
    rho = spec.rho if spec.net == "resnet" else None
    for layer in range(1, depth + 1):
        act = phi(h)
        C[:, layer - 1] = spec.sb2 + (spec.sw2 / width) * _gram(act)
        if not literal:
            z = draw(noise) @ _sqrt_psd(C[:, layer - 1])
        else:
            z = math.sqrt(spec.sw2 / width) * (draw(weights) @ act)
            z += math.sqrt(spec.sb2) * draw(biases)[:, :, None]
        h = z if rho is None else h + rho * z
        K[:, layer] = _gram(h) / width
    C[:, depth] = spec.sb2_out + (spec.sw2_out / width) * _gram(phi(h))
    return K, C


def simulate(spec: NetworkSpec, K0: np.ndarray, width: int, n_init: int, seed: int,
             batch: int | None = None, progress: bool = False, *,
             keep_samples: bool = False, method: str = "kernel") -> MonteCarloResult:
    """Monte Carlo of ``n_init`` width-``width`` networks from the input kernel ``K0``.

    ``batch`` initializations are simulated at once (``None``: about 32 MB per
    tensor). ``progress`` prints a line on stderr about every 10 % of batches.
    ``keep_samples`` keeps every initialization's ``K`` and ``C`` (memory
    ``2 n_init (L+1) P^2`` floats), for covariances across layers.
    """
    K0 = check_kernel("K0", K0)
    width = _check_count("width", width, 1)
    n_init = _check_count("n_init", n_init, 2)
    seed = _check_count("seed", seed, 0)
    if method not in METHODS:
        raise SpecError("method", method, f"must be one of {', '.join(METHODS)}")
    depth, n_inputs = spec.depth, K0.shape[0]
    if batch is None:
        batch = _auto_batch(method, width, depth, n_inputs)
        if progress:  # at least ~10 batches, so that there is progress to report
            batch = min(batch, -(-n_init // 10))
    batch = min(_check_count("batch", batch, 1), n_init)

    phi = activation_function(spec.activation)
    sqrt_k0 = _sqrt_psd(K0)
    children = np.random.SeedSequence(seed).spawn(n_init)
    k_stats = _Moments((depth + 1, n_inputs, n_inputs))
    c_stats = _Moments((depth + 1, n_inputs, n_inputs))
    k_samples = np.empty((n_init, depth + 1, n_inputs, n_inputs)) if keep_samples else None
    c_samples = np.empty_like(k_samples) if k_samples is not None else None

    n_batches = -(-n_init // batch)
    start = time.perf_counter()
    reported = 0
    for index in range(n_batches):
        lo, hi = index * batch, min((index + 1) * batch, n_init)
        gens = [np.random.Generator(np.random.PCG64(child)) for child in children[lo:hi]]
        K, C = _run_batch(spec, phi, sqrt_k0, gens, width, method)
        if not (np.all(np.isfinite(K)) and np.all(np.isfinite(C))):
            raise FloatingPointError(
                f"non-finite kernel in the Monte Carlo (activation {spec.activation!r} "
                f"overflowed or is undefined on the sampled pre-activations)")
        k_stats.add(K)
        c_stats.add(C)
        if k_samples is not None and c_samples is not None:
            k_samples[lo:hi] = K
            c_samples[lo:hi] = C
        decile = (10 * (index + 1)) // n_batches
        if progress and (decile > reported or index + 1 == n_batches):
            reported = decile
            print(f"symfield montecarlo: {hi}/{n_init} initializations "
                  f"({100 * hi // n_init}%), {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)

    c_stderr = c_stats.stderr()
    return MonteCarloResult(
        K_mean=k_stats.mean, K_stderr=k_stats.stderr(),
        C_mean=c_stats.mean, C_stderr=c_stderr,
        K_out_mean=c_stats.mean[depth].copy(), K_out_stderr=c_stderr[depth].copy(),
        width=width, n_init=n_init, seed=seed, method=method, K0=K0, spec=spec,
        elapsed=time.perf_counter() - start, C_samples=c_samples, K_samples=k_samples)


def zscores(theory: np.ndarray, mean: np.ndarray, stderr: np.ndarray) -> np.ndarray:
    """``(mean - theory) / stderr``; where ``stderr == 0`` it is 0 on agreement, else inf."""
    theory, mean, stderr = np.broadcast_arrays(np.asarray(theory, dtype=float),
                                               np.asarray(mean, dtype=float),
                                               np.asarray(stderr, dtype=float))
    diff = mean - theory
    safe = np.where(stderr > 0, stderr, 1.0)
    exact = np.abs(diff) <= 1e-12 * np.maximum(1.0, np.abs(theory))
    degenerate = np.where(exact, 0.0, np.copysign(np.inf, diff))
    return np.where(stderr > 0, diff / safe, degenerate)


def _entries(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Indices to tabulate: all, but only ``a <= b`` over trailing square axes."""
    square = len(shape) >= 2 and shape[-1] == shape[-2]
    return [idx for idx in np.ndindex(*shape) if not square or idx[-2] <= idx[-1]]


def format_table(theory: np.ndarray, mean: np.ndarray, stderr: np.ndarray,
                 name: str = "K", labels: Sequence[str] | None = None) -> str:
    """A text table: entry, theory, MC mean, stderr, z (upper triangle of kernels).

    ``labels`` name the entries of the leading axis of 3-D arrays (default
    ``name[l]``), e.g. :meth:`MonteCarloResult.field_labels`.
    """
    theory, mean, stderr = np.broadcast_arrays(np.asarray(theory, dtype=float),
                                               np.asarray(mean, dtype=float),
                                               np.asarray(stderr, dtype=float))
    z = zscores(theory, mean, stderr)
    rows = []
    for idx in _entries(theory.shape):
        if theory.ndim == 3:
            head = labels[idx[0]] if labels is not None else f"{name}[{idx[0]}]"
            label = f"{head}[{idx[1]},{idx[2]}]"
        else:
            label = f"{name}[{','.join(map(str, idx))}]" if idx else name
        rows.append((label, theory[idx], mean[idx], stderr[idx], z[idx]))
    width = max([len("entry")] + [len(row[0]) for row in rows])
    lines = [f"{'entry':<{width}}  {'theory':>12}  {'MC mean':>12}  {'stderr':>10}  {'z':>7}"]
    lines += [f"{label:<{width}}  {t:12.6f}  {m:12.6f}  {s:10.2e}  {zz:7.2f}"
              for label, t, m, s, zz in rows]
    return "\n".join(lines)
