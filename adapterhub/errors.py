"""Every error adapterhub raises on purpose derives from AdapterHubError."""
from __future__ import annotations

import difflib


class AdapterHubError(Exception):
    """Base of every error adapterhub raises on purpose."""


class ConfigError(AdapterHubError, ValueError):
    """A config key or value is wrong."""


class DataError(AdapterHubError, ValueError):
    """Input data is malformed: the message names the file, line and field."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.file, self.line, self.field = file, line, field


class RegistryError(AdapterHubError, OSError):
    """A registry entry is corrupt, partial or refused."""


class AdapterNotFoundError(AdapterHubError, LookupError):
    """No adapter (or version) of that name in the registry."""

    def __init__(self, name: str, available: list[str], registry: str = "adapters", hint: str = ""):
        self.name, self.available = name, list(available)
        msg = f"adapter '{name}' not found in {registry}/ (available: {', '.join(available) or 'none'})."
        close = difflib.get_close_matches(name.split("@")[0], self.available, n=1)
        if close:
            msg += f" Did you mean '{close[0]}'?"
        msg += hint or f" Train one with: adapterhub train {name.split('@')[0]} --scenario SCENARIO --data PATH"
        super().__init__(msg)

    def __str__(self) -> str:  # LookupError would otherwise quote the message
        return self.args[0]


class IncompatibleAdapterError(AdapterHubError, ValueError):
    """The adapter was trained on another base, or targets modules the hub cannot serve."""


class BaseModelError(AdapterHubError, RuntimeError):
    """A base spec cannot be resolved or loaded."""


def did_you_mean(value: str, options) -> str:
    close = difflib.get_close_matches(value, list(options), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""
