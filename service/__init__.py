"""HTTP inference service for the next-frame models exported by ``model_export``."""

__version__ = "0.1.0"
