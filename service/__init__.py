"""HTTP inference service for the next-frame models exported by ``model_export``."""
