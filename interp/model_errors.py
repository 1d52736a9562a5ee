"""`ModelLoadError`, in a module of its own so that the `interp` command can catch it
without importing torch and TransformerLens (`interp.models` re-exports it)."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """A model could not be built or loaded; the message is one line saying why."""
