"""What the documentation site generates from the code: the settings table, the HTTP API
reference and the results tables (``mkdocs.yml`` runs ``hooks.py`` at every build)."""
