"""Leading-order kernel code: the NNGP recursion and responses for every built-in family."""

from symfield.activations import BUILTIN
from symfield.pipeline import kernel_modules
from symfield.spec import DerivationSpec

SPEC = DerivationSpec(activations=BUILTIN)


def outputs() -> dict[str, str]:
    return kernel_modules(SPEC, source="derivations/kernels.py")
