"""The web process: API, pages, services and data access (never imports torch)."""

__version__ = "0.1.0"
