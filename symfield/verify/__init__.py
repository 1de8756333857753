"""Independent checks of symfield's derivations (Monte Carlo, mpmath references)."""
