"""Errors users see: one line that names the field and what is allowed."""

from __future__ import annotations


class ArchsmithError(ValueError):
    """Bad input to the engine. The message is meant to be shown to the user as is."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class SpecError(ArchsmithError):
    """An `ArchitectureSpec` field is out of range or inconsistent with another field."""


class ConfigError(ArchsmithError):
    """A config.json, tokenizer directory or other input file cannot be used."""
