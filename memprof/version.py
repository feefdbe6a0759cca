"""memprof's version, written once (pyproject.toml reads it from here); imports nothing."""

__version__ = "0.1.0"
