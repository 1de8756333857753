"""One-loop (1/N) moment code: generated/nlo_<family>.py for every built-in family."""

from symfield.activations import BUILTIN, FAMILIES
from symfield.codegen.nlo import render_nlo_module
from symfield.spec import DerivationSpec

SPEC = DerivationSpec(activations=BUILTIN, options=(("expansion", "one loop, P = 1"),))


def outputs() -> dict[str, str]:
    return {f"generated/nlo_{name}.py": render_nlo_module(
        FAMILIES[name], source="derivations/nlo.py", spec_hash=SPEC.spec_hash())
        for name in SPEC.activations}
