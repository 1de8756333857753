"""Network and derivation specs: validated, hashable data.

Every user-facing number enters symfield through this module, so every bad
value is caught here with an error that names the parameter, the value and
the allowed range (the CLI prints it as one line and exits with status 2).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

NetKind = Literal["ffnet", "resnet"]
NET_KINDS: tuple[str, ...] = ("ffnet", "resnet")


class SpecError(ValueError):
    """Bad user input: names the parameter, the offending value and the allowed range."""

    def __init__(self, parameter: str, value: object, allowed: str):
        self.parameter = parameter
        self.value = value
        self.allowed = allowed
        super().__init__(f"{parameter}={_show(value)}: {allowed}")


def _show(value: object) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=6, separator=",").replace("\n", "")
    return repr(value) if isinstance(value, str) else str(value)


def check_real(name: str, value: object, *, minimum: float | None = None,
               strict: bool = False, what: str = "") -> float:
    """Return ``value`` as a finite float, or raise :class:`SpecError`."""
    label = f" ({what})" if what else ""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(name, value, f"must be a real number{label}") from None
    if not math.isfinite(number):
        rng = "a finite real number" if minimum is None else (
            f"a finite number {'>' if strict else '>='} {minimum:g}")
        raise SpecError(name, value, f"must be {rng}{label}")
    if minimum is not None and (number < minimum or (strict and number == minimum)):
        op = ">" if strict else ">="
        raise SpecError(name, value, f"must be {op} {minimum:g}{label}")
    return number


#: Largest depth the command line runs (float64: about 80 us per layer for P = 2).
MAX_DEPTH = 10**6
#: Digits of the mpmath path: below 15 it is no better than float64; above 1000 the
#: closed forms take seconds per layer and quadrature families hours.
MIN_DPS, MAX_DPS = 15, 1000


def check_integer(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """An integer in [minimum, maximum]; integral numbers such as 1e3 are accepted, 15.7 not."""
    allowed = (f"must be an integer >= {minimum}" if maximum is None
               else f"must be an integer in [{minimum}, {maximum}]")
    try:
        as_float = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(name, value, allowed) from None
    if isinstance(value, bool) or not math.isfinite(as_float) or as_float != int(as_float):
        raise SpecError(name, value, allowed)
    number = int(as_float)
    if isinstance(value, str):  # exact for long integer strings beyond float precision
        try:
            number = int(value.strip())
        except ValueError:
            pass
    if number < minimum or (maximum is not None and number > maximum):
        raise SpecError(name, value, allowed)
    return number


def check_depth(name: str, value: object, maximum: int | None = None) -> int:
    """Depth: an integer >= 1 (and <= ``maximum`` if given)."""
    return check_integer(name, value, 1, maximum)


def check_kernel(name: str, value: object, *, rtol: float = 1e-12) -> np.ndarray:
    """Validate an input kernel: finite, square, symmetric, PSD, positive diagonal.

    A scalar is a 1 x 1 kernel. The diagonal must be strictly positive because
    correlations ``K_ab / sqrt(K_aa K_bb)`` enter every closed form.
    """
    try:
        matrix = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise SpecError(name, value, "must be a real P x P matrix") from None
    if matrix.ndim == 0:
        matrix = matrix.reshape(1, 1)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise SpecError(name, matrix, f"must be a square P x P matrix, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise SpecError(name, matrix, "entries must be finite (no NaN or inf)")
    scale = float(np.max(np.abs(matrix)))
    if np.max(np.abs(matrix - matrix.T)) > rtol * scale:
        raise SpecError(name, matrix, "must be symmetric (K_ab == K_ba)")
    diag = np.diag(matrix)
    if np.any(diag <= 0):
        raise SpecError(name, matrix, "diagonal entries must be > 0 (positive variances)")
    normalized = matrix / np.sqrt(np.outer(diag, diag))
    low = float(np.min(np.linalg.eigvalsh(normalized)))
    if low < -1e-12 * matrix.shape[0]:
        raise SpecError(name, matrix, f"must be positive semi-definite (smallest eigenvalue "
                                      f"of the correlation matrix is {low:.3g} < 0)")
    return 0.5 * (matrix + matrix.T)


def parse_kernel(text: str, name: str = "K0") -> np.ndarray:
    """Parse ``--K0``: a number, or rows separated by ``;`` and entries by ``,``."""
    rows = [row for row in str(text).strip().split(";")]
    try:
        entries = [[float(item) for item in row.split(",")] for row in rows]
    except ValueError:
        raise SpecError(name, text, "must be a number or rows 'a,b;c,d' of numbers") from None
    if len({len(row) for row in entries}) != 1:
        raise SpecError(name, text, "rows must all have the same number of entries")
    return check_kernel(name, entries)


@dataclass(frozen=True)
class NetworkSpec:
    """A network prior: architecture, activation and variances (docs/equations.md).

    ``rho`` is the residual scaling (ResNet only); ``activation`` is a name
    known to :mod:`symfield.activations` (e.g. ``erf``, ``relu``,
    ``leaky_relu:0.1``, ``tanh``, ``expr:x*exp(-x**2)``).
    """

    net: str
    activation: str
    sw2: float
    sb2: float
    depth: int
    rho: float | None = None
    sw2_in: float = 1.0
    sb2_in: float = 0.0
    sw2_out: float = 1.0
    sb2_out: float = 0.0

    def __post_init__(self) -> None:
        if self.net not in NET_KINDS:
            raise SpecError("net", self.net, f"must be one of {', '.join(NET_KINDS)}")
        for name in ("sw2", "sw2_in", "sw2_out"):
            object.__setattr__(self, name, check_real(name, getattr(self, name), minimum=0.0,
                                                      what="a weight variance"))
        for name in ("sb2", "sb2_in", "sb2_out"):
            object.__setattr__(self, name, check_real(name, getattr(self, name), minimum=0.0,
                                                      what="a bias variance"))
        object.__setattr__(self, "depth", check_depth("depth", self.depth))
        if self.net == "resnet":
            if self.rho is None:
                raise SpecError("rho", None, "a ResNet needs the residual scaling: pass rho >= 0")
            object.__setattr__(self, "rho", check_real("rho", self.rho, minimum=0.0,
                                                       what="the residual scaling"))
        elif self.rho is not None:
            raise SpecError("rho", self.rho, "only a ResNet has a residual scaling; "
                                             "leave it unset for --net ffnet")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DerivationSpec:
    """What a build derives: the activations to generate code for, and the nets."""

    activations: tuple[str, ...]
    nets: tuple[str, ...] = NET_KINDS
    options: tuple[tuple[str, object], ...] = field(default_factory=tuple)

    def spec_hash(self) -> str:
        """A short stable hash of the spec, printed into generated headers."""
        payload = json.dumps(asdict(self), sort_keys=True, default=str).encode()
        return hashlib.sha256(payload).hexdigest()[:16]
