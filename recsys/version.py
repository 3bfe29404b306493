"""The package version (one place: recsys/__init__.py, exports and run info read it here)."""
__version__ = "0.1.0"
