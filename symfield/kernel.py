"""Leading-order results for one network: load the generated module and run it.

Built-in families are imported from the committed ``generated/`` package; any
other family (a user's SymPy expression) is generated on demand into a cache
directory and imported from there by path.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

from . import __version__
from .activations import BUILTIN, Activation, resolve
from .spec import NetworkSpec, check_kernel


class NumericalError(ArithmeticError):
    """A result that would be NaN or infinite where a finite number is owed."""


def cache_dir() -> Path:
    root = os.environ.get("SYMFIELD_CACHE") or Path.home() / ".cache" / "symfield"
    return Path(root) / "generated"


def load_module(activation: Activation) -> ModuleType:
    """The generated numpy module for ``activation``'s family."""
    family = activation.family
    if family.name in BUILTIN:
        return importlib.import_module(f"generated.{family.name}")
    from .pipeline import module_text  # deferred: SymPy derivation only when needed

    # the family name is a hash of the expression; the digest keys the code generator
    return cached_module(f"{family.name}_{_generator_digest()}", lambda: module_text(family))


def cached_module(stem: str, render: Callable[[], str]) -> ModuleType:
    """Import ``cache_dir()/stem.py``, rendering it first (written atomically) if absent."""
    path = cache_dir() / f"{stem}.py"
    if not path.exists():
        text = render()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return import_path(path, f"symfield_user_{stem}")


def import_path(path: Path, name: str) -> ModuleType:
    """Import a generated module from a file by path (generated code is never eval'd)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=1)
def _generator_digest() -> str:
    """Hash of symfield's own sources: a cached module is reused only by the same generator."""
    digest = hashlib.sha256(__version__.encode())
    root = Path(__file__).resolve().parent
    for path in sorted([*root.rglob("*.py"), *root.rglob("*.j2")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def moments_label(module: ModuleType) -> str:
    """'exact' or a description of the quadrature rule and its stated accuracy."""
    if module.KIND == "exact":
        return "exact"
    return (f"quadrature (composite Gauss-Legendre, {module.QUADRATURE_NODES} nodes per "
            f"panel, stated relative accuracy {module.STATED_ACCURACY:g} for variances in "
            f"[{module.QUADRATURE_Q_MIN:g}, {module.QUADRATURE_Q_MAX:g}])")


def check_variances(module: ModuleType, variances: np.ndarray, spec: NetworkSpec) -> None:
    """Refuse variances outside the range where the module's quadrature was measured."""
    lo, hi = module.QUADRATURE_Q_MIN, module.QUADRATURE_Q_MAX
    outside = [float(v) for v in np.ravel(variances) if not lo <= v <= hi]
    if outside:
        raise NumericalError(
            f"variance {outside[0]:.6g} is outside the trusted quadrature range "
            f"[{lo:g}, {hi:g}] of activation {spec.activation} (net={spec.net}, "
            f"depth={spec.depth}), where its accuracy was measured")


def compute(spec: NetworkSpec, K0: np.ndarray, *, tensor: bool = False,
            layers: bool = False, progress=None) -> dict:
    """K^(L), K_out, chi, chi_out (and optionally the tensor and per-layer values).

    The result also carries ``moments`` (exact/quadrature label) and
    ``warnings`` (e.g. a response too large for float64, reported in log form).
    """
    activation = resolve(spec.activation)
    K0 = check_kernel("K0", K0)
    module = load_module(activation)
    kwargs = dict(sw2=spec.sw2, sb2=spec.sb2, depth=spec.depth, sw2_out=spec.sw2_out,
                  sb2_out=spec.sb2_out, tensor=tensor, layers=layers,
                  **activation.param_values)
    if progress is not None:  # fraction of the layer work done (generated modules)
        kwargs["progress"] = progress
    if spec.net == "resnet":
        kwargs["rho"] = spec.rho
    quadrature = module.KIND == "quadrature"
    if quadrature:
        check_variances(module, np.diag(K0), spec)
        kwargs["layers"] = True  # every layer's variances are checked below
    with np.errstate(over="ignore", invalid="ignore"):
        result = module.NETS[spec.net](K0, **kwargs)
    if quadrature:
        check_variances(module, np.diagonal(result["K_layers"], axis1=-2, axis2=-1), spec)
        if not layers:
            result.pop("K_layers")
            result.pop("chi_layers", None)
    warnings = []
    for key in ("K", "K_out"):
        if not np.all(np.isfinite(result[key])):
            raise NumericalError(
                f"{key} is not finite: the kernel diverges for this network "
                f"(net={spec.net}, activation={spec.activation}, sw2={spec.sw2}, "
                f"depth={spec.depth}); use a smaller depth or weight variance")
    for key in ("chi", "chi_out"):
        if not np.all(np.isfinite(result[key])):
            warnings.append(f"{key} overflows float64; see log_abs_{key} and {key}_sign")
    result["moments"] = moments_label(module)
    result["warnings"] = warnings
    return result
