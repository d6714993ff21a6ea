"""The package version (kept in one place; read by pyproject and ``cassr --version``)."""

__version__ = "0.1.0"
