"""Pipeline entry points that derivations call: spec in, file texts out.

A derivation file declares what to derive (a :class:`DerivationSpec`) and
calls one of these; it never formats strings itself.
"""

from __future__ import annotations

from .activations import FAMILIES, Family
from .codegen.python import render_module
from .ir import kernel_routine
from .spec import DerivationSpec

GENERATED_PACKAGE_DOC = '''"""Generated numpy modules (one per activation family). DO NOT EDIT.

Regenerate with `symfield build`; each module imports only numpy (and
scipy.special where a special function needs it).
"""
'''


def kernel_modules(spec: DerivationSpec, source: str) -> dict[str, str]:
    """generated/<family>.py for every activation family in the spec."""
    files = {"generated/__init__.py": GENERATED_PACKAGE_DOC}
    for name in spec.activations:
        routine = kernel_routine(FAMILIES[name])
        files[f"generated/{name}.py"] = render_module(
            routine, source=source, spec_hash=spec.spec_hash())
    return files


def module_text(family: Family, source: str = "symfield (on demand)") -> str:
    """The generated module for a family outside the build (e.g. a user expression)."""
    routine = kernel_routine(family)
    spec = DerivationSpec(activations=(family.name,))
    return render_module(routine, source=source, spec_hash=spec.spec_hash())
