"""Printers and templates: turn derived expressions into code and LaTeX."""
