"""mpmath evaluation of the one-loop terms (``symfield nlo --dps``)."""

from __future__ import annotations

from .spec import NetworkSpec, SpecError


def run_mp(spec: NetworkSpec, K0: object, dps: int) -> dict:
    raise SpecError("dps", dps, "the mpmath path of symfield nlo is not available yet; "
                                "drop --dps for float64")
