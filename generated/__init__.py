"""Generated numpy modules (one per activation family). DO NOT EDIT.

Regenerate with `symfield build`; each module imports only numpy (and
scipy.special where a special function needs it).
"""
