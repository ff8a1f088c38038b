"""Format and framework adapters for dp4tl-data, one module per format.

Installed as ``dp4tl_data.plugins`` and discovered through the ``dp4tl_data.plugins`` entry
points declared in pyproject.toml. Each module's ``register(registry)`` must not import its
format library at module import time, so a missing optional extra only disables that plugin.
"""
