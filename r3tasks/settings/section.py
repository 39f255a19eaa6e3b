"""The base of every settings section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # A misspelt setting is an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid")
