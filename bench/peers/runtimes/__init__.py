"""The small runtimes each peer serves the models with, run in the peer's own venv."""
