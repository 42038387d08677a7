"""The functional core: pure functions from (pod, identity, settings) to a JSON patch.

Nothing in this package performs I/O; import-linter enforces it (see pyproject.toml).
"""
