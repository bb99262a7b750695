"""The package version (one place; `qknorm --version` and the study's summary read it)."""

__version__ = "0.1.0"
