"""The base of every group of settings: a stage's config and the settings a method or plug-in owns.

A method module declares its own settings as a subclass of ``Settings`` (types, defaults, ranges
and help); ``nas.config`` composes them with the shared keys into the search config, so a params
file, a saved run config and ``--set drnas_lambda=...`` name them as before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


def _number_as_text(value: Any) -> Any:
    """A text key given a number (``--set device=0``, ``seed`` in a YAML file) keeps its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


class Settings(BaseModel):
    """A stage's settings: unknown keys, wrong types (no silent coercion: ``"3"`` is not an int, ``1``
    is not a bool), NaN and inf, values out of their range and choices outside their list are
    refused when the model is built; ``validate`` adds the checks between keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=False)

    @field_validator("*", mode="before")
    @classmethod
    def _text(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields[info.field_name]
        if field.annotation is str or field.annotation == (str | None):
            return _number_as_text(value)
        return value

    @classmethod
    def resolved(cls, cfg: Any, space: Any) -> dict[str, Any]:
        """The values this group gives its ``None`` (auto) keys in ``cfg`` on ``space``: a method's
        defaults that depend on the space (``nas.runs.resolve`` applies them once, before keying)."""
        return {}
