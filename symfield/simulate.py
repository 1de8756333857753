"""Monte Carlo of finite-width networks at initialization (docs/equations.md).

The networks start from the input kernel: ``h^(0)_i ~ N(0, K0)`` i.i.d. over
the ``N`` neurons, then ``L`` hidden layers (FFNet or ResNet) and the readout.
Per initialization we record the empirical kernels
``K_hat^(l)_ab = (1/N) sum_i h^(l)_ia h^(l)_ib`` (``l = 0..L``) and the
auxiliary fields ``C^(l)_ab = sb2 + (sw2/N) sum_i phi(h^(l-1)_ia) phi(h^(l-1)_ib)``
(``l = 1..L``) plus the readout field ``C_out`` (with ``sb2_out``, ``sw2_out``),
whose mean is the output kernel ``K_out = E[y_a y_b]``.

Two samplers give the same distribution:

* ``method="weights"`` draws the weight matrices ``W^(l)`` (``N x N``) and biases
  and multiplies them out, literally as in docs/equations.md;
* ``method="kernel"`` (default) uses that ``W^(l)`` and ``b^(l)`` are fresh at
  every layer: given ``h^(l-1)``, the rows ``W_i phi(h^(l-1)) + b_i`` are i.i.d.
  Gaussian vectors over the ``P`` inputs with covariance exactly ``C^(l)``, so
  ``h^(l)`` is sampled from ``N(0, C^(l))`` per neuron. This is exact at any
  ``N`` (no large-width approximation) and costs ``N P`` instead of ``N^2``
  normal numbers per layer; the test suite checks it against the literal sampler.

Both samplers draw the input layer as ``h^(0) ~ N(0, K0)`` per neuron, which is
exact: ``W_in`` and ``b_in`` enter only through ``K0 = sb2_in + sw2_in x.x/d_in``.

Every initialization has its own random stream, spawned from
``SeedSequence(seed)`` (child ``i`` is ``SeedSequence(seed, spawn_key=(i,))``)
and fed to ``Generator(PCG64(...))``, so the samples depend only on
``(spec, K0, width, seed, method)``, and the first ``k`` initializations are the
same for every ``n_init >= k``. Statistics are computed per block of
:func:`stat_block` consecutive initializations (a function of ``L`` and ``P``
only) and merged in initialization order, so means, variances and standard
errors are bitwise the same for any batch size, chunking or number of dask
workers (on machines with the same numpy).

Cost. The kernel sampler needs, per neuron, input and layer, one normal number
(about 8 ns with PCG64) and one ``phi`` (erf about 8-14 ns with scipy); the rest
(the ``P x P`` Gram matrices, the batched symmetric square root of ``C``, the
``(N, P) x (P, P)`` products) is about 10 % at ``P = 2``. The literal sampler
needs ``N`` normal numbers per neuron and layer instead. At ``P = 2``,
``L = 100``, ``N = 500`` the kernel sampler is 85-100x faster (``symfield bench``).
"""

from __future__ import annotations

import functools
import math
import os
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

#: Largest number of initializations per statistics block (see :func:`stat_block`).
_STAT_BLOCK = 64

#: Seconds a run must have taken before :func:`simulate` shows its progress bar.
PROGRESS_DELAY = 2.0

ArrayFunction = Callable[..., np.ndarray]  # phi(x, out=None)


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
    # phi(x) = F(x) with F a numpy/scipy ufunc: call it directly, writing into ``out``
    ufunc = {sp.erf: _erf if isinstance(_erf, np.ufunc) else None,
             sp.tanh: np.tanh}.get(phi.func) if phi.args == (X,) else None

    def phi_numpy(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if ufunc is not None:
            return ufunc(x, out=out)
        value = np.asarray(raw(x), dtype=float)
        if out is not None:
            out[...] = value
            return out
        if value.shape != x.shape:  # a constant expression
            value = np.broadcast_to(value, x.shape).copy()
        return value

    phi_numpy.__doc__ = f"phi(x) = {sp.sstr(phi)} (numpy)"
    return phi_numpy


@dataclass(frozen=True)
class MonteCarloResult:
    """Means, variances and their standard errors (over initializations) of the kernels.

    ``K_*`` has shape ``(L+1, P, P)`` for ``K_hat^(0..L)``. ``C_*`` has shape
    ``(L+1, P, P)``: index ``l-1`` holds ``C^(l)`` (``l = 1..L``), index ``L``
    the readout field ``C_out``; ``K_out_*`` repeats that last entry. Standard
    errors of means are ``std(ddof=1) / sqrt(n_init)``. ``*_var`` are the
    unbiased sample variances ``s^2`` over initializations and ``*_var_stderr``
    their standard errors ``sqrt((m4 - s^4 (n-3)/(n-1)) / n)`` (``m4`` the fourth
    central sample moment; :data:`VARIANCE_STDERR`). ``Y_*`` (``(P, P)``) are the
    same for the empirical readout kernel ``y_a y_b`` of one readout unit
    ``y = W_out phi(h^(L)) + b_out`` (``E[y_a y_b] = E[C_out] = K_out``).
    ``C_samples`` / ``K_samples`` (``(n_init, L+1, P, P)``, same layouts) and
    ``Y_samples`` (``(n_init, P, P)``) are kept only with ``keep_samples``.
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
    K_var: np.ndarray | None = None
    K_var_stderr: np.ndarray | None = None
    C_var: np.ndarray | None = None
    C_var_stderr: np.ndarray | None = None
    K_out_var: np.ndarray | None = None
    K_out_var_stderr: np.ndarray | None = None
    chunks: int = 1
    workers: int | None = None
    stat_block: int = 0
    Y_mean: np.ndarray | None = None
    Y_stderr: np.ndarray | None = None
    Y_var: np.ndarray | None = None
    Y_var_stderr: np.ndarray | None = None
    Y_samples: np.ndarray | None = None

    @property
    def depth(self) -> int:
        return self.K_mean.shape[0] - 1

    def field_labels(self) -> list[str]:
        """Labels of the ``C`` entries: ``C^(1)``, ..., ``C^(L)``, ``C_out``."""
        return [f"C^({layer})" for layer in range(1, self.depth + 1)] + ["C_out"]


#: How ``*_var_stderr`` is computed (echoed by ``symfield simulate --json``).
VARIANCE_STDERR = ("sqrt((m4 - s^4 (n-3)/(n-1)) / n): s^2 the unbiased sample variance, "
                   "m4 the fourth central sample moment, n the number of initializations")


@dataclass(frozen=True)
class Moments:
    """Count, mean and sums of 2nd-4th powers of deviations of a sample, mergeable.

    :meth:`merge` is the pairwise update of Chan et al. extended to the third
    and fourth moments (Pebay 2008, "Formulas for robust, one-pass parallel
    computation of covariances and arbitrary-order statistical moments").
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray
    m3: np.ndarray
    m4: np.ndarray

    @classmethod
    def of(cls, samples: np.ndarray) -> Moments:
        """Moments of ``samples`` along axis 0."""
        mean = samples.mean(axis=0)
        dev = samples - mean
        dev2 = dev * dev
        return cls(samples.shape[0], mean, dev2.sum(axis=0), (dev2 * dev).sum(axis=0),
                   (dev2 * dev2).sum(axis=0))

    def merge(self, other: Moments) -> Moments:
        na, nb = self.count, other.count
        n = na + nb
        delta = other.mean - self.mean
        d_n = delta / n
        mean = self.mean + nb * d_n
        m2 = self.m2 + other.m2 + delta * d_n * na * nb
        m3 = (self.m3 + other.m3 + delta * d_n * d_n * na * nb * (na - nb)
              + 3.0 * d_n * (na * other.m2 - nb * self.m2))
        m4 = (self.m4 + other.m4 + delta * d_n**3 * na * nb * (na * na - na * nb + nb * nb)
              + 6.0 * d_n * d_n * (na * na * other.m2 + nb * nb * self.m2)
              + 4.0 * d_n * (na * other.m3 - nb * self.m3))
        return Moments(n, mean, m2, m3, m4)

    def stderr(self) -> np.ndarray:
        """Standard error of the mean."""
        return np.sqrt(self.m2 / (self.count - 1) / self.count)

    def variance(self) -> np.ndarray:
        """Unbiased sample variance ``s^2``."""
        return self.m2 / (self.count - 1)

    def variance_stderr(self) -> np.ndarray:
        """Standard error of ``s^2``: ``sqrt((m4 - s^4 (n-3)/(n-1)) / n)`` (clipped at 0)."""
        n = self.count
        s2 = self.variance()
        return np.sqrt(np.clip(self.m4 / n - s2 * s2 * (n - 3) / (n - 1), 0.0, None) / n)


def _gram(a: np.ndarray) -> np.ndarray:
    """``sum_i a_ia a_ib`` for a batch ``(b, N, P)``, symmetrised, shape ``(b, P, P)``."""
    g = np.matmul(np.swapaxes(a, -1, -2), a)
    return 0.5 * (g + np.swapaxes(g, -1, -2))


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of (a batch of) PSD matrices; tiny negative eigenvalues clipped."""
    w, v = np.linalg.eigh(c)
    root = np.sqrt(np.clip(w, 0.0, None))
    return np.matmul(v * root[..., None, :], np.swapaxes(v, -1, -2))


def check_count(name: str, value: object, minimum: int) -> int:
    """``value`` as an integer ``>= minimum``, or :class:`SpecError` naming ``name``."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(name, value, f"must be an integer >= {minimum}") from None
    if not math.isfinite(number) or number != int(number) or number < minimum:
        raise SpecError(name, value, f"must be an integer >= {minimum}")
    return int(number)


def _auto_batch(method: str, width: int, depth: int, n_inputs: int) -> int:
    per_init = width * width if method == "weights" else width * n_inputs * (depth + 1)
    per_init = max(per_init, _summary_size(depth, n_inputs))
    return max(1, _BATCH_FLOATS // per_init)


def stat_block(depth: int, n_inputs: int) -> int:
    """Initializations per statistics block: a function of the problem shape only.

    Moments are computed from the samples of each block of ``stat_block``
    consecutive initializations and merged in initialization order, so the
    results are bitwise the same for any batch size, chunking or worker count.
    """
    return max(1, min(_STAT_BLOCK, _BATCH_FLOATS // _summary_size(depth, n_inputs)))


def _summary_size(depth: int, n_inputs: int) -> int:
    """Floats recorded per initialization: ``K^(0..L)``, ``C^(1..L)``, ``C_out``, ``y y^T``."""
    return (2 * (depth + 1) + 1) * n_inputs * n_inputs


@functools.lru_cache(maxsize=16)
def _phi_cached(activation: str) -> ArrayFunction:
    return activation_function(activation)


def _generator(seed: int, index: int) -> np.random.Generator:
    """Initialization ``index``'s stream: child ``index`` of ``SeedSequence(seed)``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(index,))))


def _run_batch(spec: NetworkSpec, phi: ArrayFunction, sqrt_k0: np.ndarray,
               gens: Sequence[np.random.Generator], width: int,
               method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one batch: ``K``, ``C`` of shape ``(b, L+1, P, P)`` and ``Y`` ``(b, P, P)``.

    ``Y_ab = y_a y_b`` is the empirical kernel of one readout unit
    ``y = W_out phi(h^(L)) + b_out``, drawn after everything else.

    Each initialization's stream is consumed in the same order whatever the
    batch: the kernel sampler draws ``N x P`` normals per layer (``l = 0..L``),
    taken as blocks of layers in one call per initialization; the literal
    sampler draws ``h^(0)`` and then per layer the ``N x N`` weights and ``N`` biases.
    """
    size, depth, n_inputs = len(gens), spec.depth, sqrt_k0.shape[0]
    K = np.empty((size, depth + 1, n_inputs, n_inputs))
    C = np.empty_like(K)
    rho = spec.rho if spec.net == "resnet" else None
    literal = method == "weights"
    span = 1 if literal else max(1, min(depth + 1, _BATCH_FLOATS // (size * width * n_inputs)))
    noise = np.empty((size, span, width, n_inputs))
    block = {"start": 0, "end": 0}  # layers held in ``noise`` (kernel sampler)

    def layer_noise(layer: int) -> np.ndarray:
        """The ``(b, N, P)`` standard normals of ``layer``, drawn ``span`` layers at a time."""
        if layer >= block["end"]:
            count = min(span, depth + 1 - layer)
            for gen, rows in zip(gens, noise, strict=True):
                gen.standard_normal(out=rows[:count])
            block["start"], block["end"] = layer, layer + count
        return noise[:, layer - block["start"]]

    if literal:
        weights = np.empty((size, width, width))
        biases = np.empty((size, width))
    # preallocated (b, N, P) buffers: h, phi(h) and the layer's update z
    h, act, z = (np.empty((size, width, n_inputs)) for _ in range(3))
    np.matmul(layer_noise(0), sqrt_k0, out=h)
    K[:, 0] = _gram(h) / width
    for layer in range(1, depth + 1):
        phi(h, out=act)
        C[:, layer - 1] = spec.sb2 + (spec.sw2 / width) * _gram(act)
        if literal:
            for gen, w, b in zip(gens, weights, biases, strict=True):
                gen.standard_normal(out=w)
                gen.standard_normal(out=b)
            np.matmul(weights, act, out=z)
            z *= math.sqrt(spec.sw2 / width)
            z += math.sqrt(spec.sb2) * biases[:, :, None]
        else:
            np.matmul(layer_noise(layer), _sqrt_psd(C[:, layer - 1]), out=z)
        if rho is None:
            h, z = z, h
        else:  # h + rho z, in place (the same rounding)
            z *= rho
            h += z
        K[:, layer] = _gram(h) / width
    phi(h, out=act)
    C[:, depth] = spec.sb2_out + (spec.sw2_out / width) * _gram(act)
    # one readout unit y (last in each stream): literal W_out, b_out, or y ~ N(0, C_out)
    y = np.empty((size, 1, n_inputs))
    if literal:
        w_out = np.empty((size, 1, width))
        b_out = np.empty((size, 1, 1))
        for gen, w, b in zip(gens, w_out, b_out, strict=True):
            gen.standard_normal(out=w)
            gen.standard_normal(out=b)
        np.matmul(w_out, act, out=y)
        y *= math.sqrt(spec.sw2_out / width)
        y += math.sqrt(spec.sb2_out) * b_out
    else:
        for gen, row in zip(gens, y, strict=True):
            gen.standard_normal(out=row)
        y = np.matmul(y, _sqrt_psd(C[:, depth]))
    Y = np.matmul(np.swapaxes(y, -1, -2), y)
    return K, C, Y


@dataclass(frozen=True)
class _Job:
    """Everything a chunk needs (picklable: it travels to dask workers)."""

    spec: NetworkSpec
    K0: np.ndarray
    width: int
    seed: int
    method: str
    batch: int
    block: int
    keep_samples: bool


@dataclass(frozen=True)
class _ChunkResult:
    lo: int
    hi: int
    blocks: list[Moments]  # statistics blocks [lo, lo + block), ... in order
    samples: np.ndarray | None  # (hi - lo, summary): K, C, Y flattened, with keep_samples


def _run_chunk(job: _Job, lo: int, hi: int,
               on_batch: Callable[[int], None] | None = None) -> _ChunkResult:
    """Initializations ``lo..hi-1`` (``lo`` a multiple of ``job.block``): block moments.

    The per-initialization results do not depend on the batch, and each block's
    moments are computed from exactly that block's samples, so the output does not
    depend on ``job.batch`` nor on how ``[0, n_init)`` was cut into chunks.
    """
    spec = job.spec
    phi = _phi_cached(spec.activation)
    sqrt_k0 = _sqrt_psd(job.K0)
    blocks: list[Moments] = []
    pending: list[np.ndarray] = []
    kept: list[np.ndarray] = []
    held = 0
    for b_lo in range(lo, hi, job.batch):
        b_hi = min(b_lo + job.batch, hi)
        gens = [_generator(job.seed, index) for index in range(b_lo, b_hi)]
        K, C, Y = _run_batch(spec, phi, sqrt_k0, gens, job.width, job.method)
        if not (np.all(np.isfinite(K)) and np.all(np.isfinite(C)) and np.all(np.isfinite(Y))):
            raise FloatingPointError(
                f"non-finite kernel in the Monte Carlo (activation {spec.activation!r} "
                f"overflowed or is undefined on the sampled pre-activations)")
        both = np.concatenate([K.reshape(len(gens), -1), C.reshape(len(gens), -1),
                               Y.reshape(len(gens), -1)], axis=1)
        if job.keep_samples:
            kept.append(both)
        pending.append(both)
        held += b_hi - b_lo
        while held >= job.block or (b_hi == hi and held > 0):
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(job.block, held)
            blocks.append(Moments.of(np.ascontiguousarray(joined[:take])))
            pending = [joined[take:]] if take < held else []
            held -= take
        if on_batch is not None:
            on_batch(b_hi - b_lo)
    samples = (np.concatenate(kept) if len(kept) > 1 else kept[0]) if kept else None
    return _ChunkResult(lo, hi, blocks, samples)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_estimate(method: str, width: int, depth: int, n_inputs: int, n_init: int,
                    batch: int, keep_samples: bool, workers: int = 1) -> int:
    """Bytes a run needs at its peak: kept samples plus the batch tensors of each worker.

    Kept samples: ``2 n_init (L+1) P^2`` floats (twice while they are gathered).
    Per worker: the noise block (kernel sampler) or the ``N x N`` weights
    (literal sampler), about six ``(b, N, P)`` activations, the batch's ``K`` and
    ``C`` and one statistics block of samples with its moments.
    """
    summary = _summary_size(depth, n_inputs)
    per_worker = batch * (6 * width * n_inputs + 2 * summary)
    if method == "weights":
        per_worker += batch * (width * width + width)
    else:
        span = max(1, min(depth + 1, _BATCH_FLOATS // (batch * width * n_inputs)))
        per_worker += batch * span * width * n_inputs
    block = stat_block(depth, n_inputs)
    per_worker += 2 * block * summary + 8 * summary
    kept = 2 * n_init * summary if keep_samples else 0
    return 8 * (workers * per_worker + kept)


def _gib(size: float) -> str:
    return f"{size / 2**30:.3g} GiB"


class _Progress:
    """A progress bar on stderr with a time estimate, shown once a run takes long.

    Nothing is printed before ``delay`` seconds have passed. On a terminal one
    line is redrawn (at most every 0.2 s); otherwise a line is printed at every
    tenth of the run.
    """

    def __init__(self, total: int, enabled: bool, label: str = "symfield simulate",
                 delay: float | None = None):
        self.total, self.enabled, self.label = total, enabled, label
        self.delay = PROGRESS_DELAY if delay is None else delay
        self.done = 0
        self.start = time.perf_counter()
        self.last_draw = -math.inf
        self.decile = 0
        self.shown = False
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    def advance(self, count: int) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        finished = self.done >= self.total
        if elapsed < self.delay and not (finished and self.shown):
            return
        if self.tty:
            if now - self.last_draw < 0.2 and not finished:
                return
            self.last_draw = now
            print("\r" + self._line(elapsed), end="\n" if finished else "", file=sys.stderr,
                  flush=True)
        else:
            decile = (10 * self.done) // self.total
            if decile <= self.decile and self.shown and not finished:
                return
            if finished and self.decile >= 10:
                return
            self.decile = decile
            print(self._line(elapsed), file=sys.stderr, flush=True)
        self.shown = True

    def _line(self, elapsed: float) -> str:
        fraction = self.done / self.total
        filled = int(round(24 * fraction))
        bar = "#" * filled + "." * (24 - filled)
        if self.done >= self.total:
            tail = f"{elapsed:.1f} s"
        else:
            left = elapsed / max(fraction, 1e-12) - elapsed
            tail = f"{elapsed:.1f} s, ~{left:.1f} s left"
        return (f"{self.label}: [{bar}] {100 * self.done // self.total:3d}% "
                f"{self.done}/{self.total} initializations, {tail}")


def _dask_client(workers: int | None, scheduler: str | None):
    """A dask.distributed client: a local cluster of ``workers`` processes, or ``scheduler``."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        name, value = ("scheduler", scheduler) if scheduler else ("workers", workers)
        raise SpecError(name, value, "needs dask.distributed (the dask extra): "
                                     "pip install -e \".[dask]\" or pip install "
                                     "\"dask[distributed]\"") from None
    import logging

    if scheduler:
        try:
            return Client(scheduler, timeout="5s"), None
        except (OSError, TimeoutError, ValueError) as error:
            raise SpecError("scheduler", scheduler,
                            f"cannot connect to a dask scheduler there ({error})") from None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _chunk_bounds(n_init: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + size, n_init)) for lo in range(0, n_init, size)]


def simulate(spec: NetworkSpec, K0: np.ndarray, width: int, n_init: int, seed: int,
             batch: int | None = None, progress: bool = False, *,
             keep_samples: bool = False, method: str = "kernel", chunk: int | None = None,
             workers: int | None = None, scheduler: str | None = None) -> MonteCarloResult:
    """Monte Carlo of ``n_init`` width-``width`` networks from the input kernel ``K0``.

    ``batch`` initializations are simulated at once (``None``: about 32 MB per
    tensor). ``progress`` draws a progress bar on stderr once the run has taken
    :data:`PROGRESS_DELAY` seconds. ``keep_samples`` keeps every initialization's
    ``K``, ``C`` and ``Y`` (memory ``(2 L + 3) P^2 n_init`` floats), for covariances
    across layers. ``chunk`` initializations (rounded up to a whole statistics block)
    form one task; ``workers`` runs the tasks on a local dask.distributed cluster
    of that many processes, ``scheduler`` on an existing cluster at that address
    (both need the ``dask`` extra). The numbers do not depend on ``batch``,
    ``chunk``, ``workers`` or ``scheduler``: every initialization has its own
    random stream and the statistics are merged in initialization order.
    A run that would need more than the available memory is refused before it
    starts (:class:`SpecError` naming ``memory``).
    """
    K0 = check_kernel("K0", K0)
    width = check_count("width", width, 1)
    n_init = check_count("n_init", n_init, 2)
    seed = check_count("seed", seed, 0)
    if method not in METHODS:
        raise SpecError("method", method, f"must be one of {', '.join(METHODS)}")
    if workers is not None:
        workers = check_count("workers", workers, 1)
    depth, n_inputs = spec.depth, K0.shape[0]
    _phi_cached(spec.activation)  # a bad activation fails here, before any work
    block = stat_block(depth, n_inputs)
    if batch is None:
        batch = _auto_batch(method, width, depth, n_inputs)
        if progress:  # at least ~20 batches, so that there is progress to report
            batch = min(batch, -(-n_init // 20))
    batch = min(check_count("batch", batch, 1), n_init)
    distributed = workers is not None or scheduler is not None
    if chunk is None:  # local: ~50 progress steps; dask: ~4 tasks per worker
        parts = 4 * (workers or 2) if distributed else 50
        chunk = max(batch, -(-n_init // parts))
    chunk = check_count("chunk", chunk, 1)
    chunk = -(-chunk // block) * block
    bounds = _chunk_bounds(n_init, chunk)

    need = memory_estimate(method, width, depth, n_inputs, n_init, batch, keep_samples,
                           workers or 1)
    free = available_memory()
    if free is not None and need > free:
        raise SpecError("memory", _gib(need),
                        f"the simulation needs about {_gib(need)} but {_gib(free)} is "
                        f"available (width={width}, inits={n_init}, depth={depth}, P={n_inputs}, "
                        f"batch={batch}{', keep_samples' if keep_samples else ''}); reduce them")

    job = _Job(spec, K0, width, seed, method, batch, block, keep_samples)
    bar = _Progress(n_init, progress)
    start = time.perf_counter()
    if distributed:
        results = _run_distributed(job, bounds, workers, scheduler, bar)
    else:
        results = [_run_chunk(job, lo, hi, bar.advance) for lo, hi in bounds]
    results.sort(key=lambda r: r.lo)

    stats = None
    for result in results:
        for moments in result.blocks:
            stats = moments if stats is None else stats.merge(moments)
    assert stats is not None and stats.count == n_init
    samples = np.concatenate([r.samples for r in results if r.samples is not None]) \
        if keep_samples else None

    def unpack(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flat records -> K ``(..., L+1, P, P)``, C (the same) and Y ``(..., P, P)``."""
        lead, size = flat.shape[:-1], (depth + 1) * n_inputs * n_inputs
        square = (n_inputs, n_inputs)
        return (flat[..., :size].reshape(*lead, depth + 1, *square),
                flat[..., size:2 * size].reshape(*lead, depth + 1, *square),
                flat[..., 2 * size:].reshape(*lead, *square))

    (K_mean, C_mean, Y_mean), (K_se, C_se, Y_se) = unpack(stats.mean), unpack(stats.stderr())
    (K_var, C_var, Y_var) = unpack(stats.variance())
    (K_vse, C_vse, Y_vse) = unpack(stats.variance_stderr())
    K_samples, C_samples, Y_samples = unpack(samples) if samples is not None else (None,) * 3
    return MonteCarloResult(
        K_mean=K_mean, K_stderr=K_se, C_mean=C_mean, C_stderr=C_se,
        K_out_mean=C_mean[depth].copy(), K_out_stderr=C_se[depth].copy(),
        width=width, n_init=n_init, seed=seed, method=method, K0=K0, spec=spec,
        elapsed=time.perf_counter() - start, C_samples=C_samples, K_samples=K_samples,
        K_var=K_var, K_var_stderr=K_vse, C_var=C_var, C_var_stderr=C_vse,
        K_out_var=C_var[depth].copy(), K_out_var_stderr=C_vse[depth].copy(),
        chunks=len(bounds), workers=workers, stat_block=block,
        Y_mean=Y_mean, Y_stderr=Y_se, Y_var=Y_var, Y_var_stderr=Y_vse, Y_samples=Y_samples)


def _run_distributed(job: _Job, bounds: list[tuple[int, int]], workers: int | None,
                     scheduler: str | None, bar: _Progress) -> list[_ChunkResult]:
    """The chunks as dask.distributed tasks; results in completion order."""
    client, cluster = _dask_client(workers, scheduler)
    try:
        from dask.distributed import as_completed

        futures = [client.submit(_run_chunk, job, lo, hi, pure=False) for lo, hi in bounds]
        results = []
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            bar.advance(result.hi - result.lo)
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


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


# ------------------------------------------------------------------ command-line output


def _stats(mean: np.ndarray, stderr: np.ndarray, var: np.ndarray | None,
           var_stderr: np.ndarray | None) -> dict[str, np.ndarray | None]:
    return {"mean": mean, "mean_stderr": stderr, "var": var, "var_stderr": var_stderr}


def result_payload(result: MonteCarloResult, nngp: dict | None = None) -> dict:
    """The JSON-ready content of ``symfield simulate --json``.

    ``layers[l]`` holds the empirical kernel ``K^(l)`` (``l = 0..L``) and, for
    ``l >= 1``, the field ``C^(l)``; ``readout`` holds the readout field
    ``C_out`` and the empirical readout kernel ``K_out = y_a y_b`` of one readout
    unit (both have the mean ``E[y_a y_b]``, the NNGP's ``K_out`` at infinite
    width; ``y`` adds its own Gaussian spread given ``C_out``). Each has
    ``mean``, ``mean_stderr``, ``var`` (over initializations) and ``var_stderr``.
    ``nngp`` is the infinite-width kernel for comparison (or why it is missing).
    """
    r = result
    layers = []
    for layer in range(r.depth + 1):
        k = _stats(r.K_mean[layer], r.K_stderr[layer],
                   None if r.K_var is None else r.K_var[layer],
                   None if r.K_var_stderr is None else r.K_var_stderr[layer])
        c = None if layer == 0 else _stats(
            r.C_mean[layer - 1], r.C_stderr[layer - 1],
            None if r.C_var is None else r.C_var[layer - 1],
            None if r.C_var_stderr is None else r.C_var_stderr[layer - 1])
        layers.append({"layer": layer, "K": k, "C": c})
    return {
        "spec": r.spec.to_dict(), "K0": r.K0, "width": r.width, "inits": r.n_init,
        "seed": r.seed, "method": r.method, "workers": r.workers, "chunks": r.chunks,
        "stat_block": r.stat_block, "elapsed_seconds": r.elapsed,
        "mean_stderr": "std(ddof=1) / sqrt(n) over the n initializations",
        "var_stderr": VARIANCE_STDERR,
        "layers": layers,
        "readout": {"C_out": _stats(r.K_out_mean, r.K_out_stderr, r.K_out_var,
                                    r.K_out_var_stderr),
                    "K_out": None if r.Y_mean is None else _stats(r.Y_mean, r.Y_stderr, r.Y_var,
                                                                  r.Y_var_stderr)},
        "nngp": nngp,
    }


def save_samples(result: MonteCarloResult, path: str) -> None:
    """Write the kept samples: ``K`` and ``C`` (``(n_init, L+1, P, P)``, layouts as in
    :class:`MonteCarloResult`), ``Y`` (``(n_init, P, P)``, ``y_a y_b`` of the readout
    unit), ``K0``, ``width``, ``seed`` and ``method`` to ``path``."""
    if result.K_samples is None or result.C_samples is None:
        raise SpecError("save_samples", path, "needs a run with keep_samples=True")
    try:
        np.savez(path, K=result.K_samples, C=result.C_samples, Y=result.Y_samples, K0=result.K0,
                 width=result.width, seed=result.seed, method=result.method)
    except OSError as error:
        raise SpecError("save_samples", path, f"cannot be written ({error})") from None


def nngp_reference(spec: NetworkSpec, K0: np.ndarray) -> dict:
    """The infinite-width kernels ``K^(0..L)`` and ``K_out`` from the generated code."""
    from .ir import GenerationError
    from .kernel import compute

    try:
        out = compute(spec, K0, layers=True)
    except (SpecError, GenerationError, ArithmeticError, ImportError) as error:
        return {"K_layers": None, "K_out": None, "reason": str(error)}
    K_layers = np.asarray(out["K_layers"], dtype=float)
    if spec.net == "ffnet":
        C_layers = K_layers[1:]
    elif spec.rho:  # K^(l) = K^(l-1) + rho^2 C^(l)
        C_layers = np.diff(K_layers, axis=0) / spec.rho**2
    else:
        C_layers = None
    return {"K_layers": K_layers, "C_layers": C_layers, "K_out": out["K_out"],
            "moments": out["moments"]}


def format_result(result: MonteCarloResult, nngp: dict | None = None) -> str:
    """A text table: per layer and entry, mean +- stderr and variance +- stderr."""
    r = result
    spec = r.spec
    head = (f"{spec.net} {spec.activation}  L={spec.depth}  sw2={spec.sw2} sb2={spec.sb2}"
            + (f" rho={spec.rho}" if spec.rho is not None else "")
            + f"  N={r.width}  inits={r.n_init}  seed={r.seed}  method={r.method}"
            + f"  ({r.elapsed:.2f} s)")
    theory = None if nngp is None else nngp.get("K_layers")
    c_theory = None if nngp is None else nngp.get("C_layers")
    rows = []
    upper = [(a, b) for a in range(r.K0.shape[0]) for b in range(a, r.K0.shape[0])]

    def add(label: str, mean, stderr, var, var_stderr, ref=None) -> None:
        for a, b in upper:
            rows.append((f"{label}[{a},{b}]", f"{mean[a, b]:.6g}", f"{stderr[a, b]:.2g}",
                         f"{var[a, b]:.4g}", f"{var_stderr[a, b]:.2g}",
                         "" if ref is None else f"{ref[a, b]:.6g}"))

    for layer in range(r.depth + 1):
        add(f"K^({layer})", r.K_mean[layer], r.K_stderr[layer], r.K_var[layer],
            r.K_var_stderr[layer], None if theory is None else np.asarray(theory)[layer])
        if layer:
            add(f"C^({layer})", r.C_mean[layer - 1], r.C_stderr[layer - 1],
                r.C_var[layer - 1], r.C_var_stderr[layer - 1],
                None if c_theory is None else np.asarray(c_theory)[layer - 1])
    out_theory = None if nngp is None or nngp.get("K_out") is None else np.asarray(
        nngp["K_out"])
    add("C_out", r.K_out_mean, r.K_out_stderr, r.K_out_var, r.K_out_var_stderr, out_theory)
    if r.Y_mean is not None:
        add("K_out", r.Y_mean, r.Y_stderr, r.Y_var, r.Y_var_stderr, out_theory)
    titles = ("entry", "mean", "stderr", "variance", "stderr", "NNGP")
    widths = [max(len(row[i]) for row in [titles, *rows]) for i in range(len(titles))]
    lines = [head, "  ".join(t.ljust(w) if i == 0 else t.rjust(w)
                             for i, (t, w) in enumerate(zip(titles, widths, strict=True)))]
    lines += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
              for row in rows]
    lines.append("K_out = y_a y_b of one readout unit; variance over initializations; "
                 "its stderr is " + VARIANCE_STDERR)
    return "\n".join(lines)
