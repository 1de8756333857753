"""symfield: symbolic derivations for signal propagation in deep network priors."""

__version__ = "0.1.0"
