"""AN EXAMPLE dmlsynth plugin (docs/extending.md): not a benchmarked method, a template for your own.

- ``specs``: the registry entries (torch-free), named by the entry points in pyproject.toml;
- ``method``: the method's code, loaded only when a run trains it.
"""
