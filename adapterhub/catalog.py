"""A caller's item catalog: item facts (popularity, category, like-rate, tags) that recommend uses
instead of the facts snapshot an adapter version was trained with."""
from __future__ import annotations

from pathlib import Path

from . import facts as facts_mod
from .errors import ConfigError


def as_facts(catalog) -> dict:
    """A catalog given as a facts dict or a facts/catalog JSON file -> the facts dict."""
    if isinstance(catalog, dict) and isinstance(catalog.get("items"), dict):
        return catalog
    if isinstance(catalog, (str, Path)):
        return facts_mod.load(catalog)
    raise ConfigError(f"catalog={type(catalog).__name__}: pass a catalog file's path or a facts dict "
                      "(adapterhub.catalog)")
