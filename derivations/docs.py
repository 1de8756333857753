"""LaTeX and Markdown of every derived equation (action, saddle point, kernels, responses)."""

from symfield.activations import BUILTIN, FAMILIES
from symfield.codegen.latex import render_documents
from symfield.spec import DerivationSpec

SPEC = DerivationSpec(activations=BUILTIN)


def outputs() -> dict[str, str]:
    texts = render_documents([FAMILIES[name] for name in SPEC.activations],
                             source="derivations/docs.py", spec_hash=SPEC.spec_hash())
    return {"docs/equations.tex": texts["tex"], "docs/equations.md": texts["md"]}
