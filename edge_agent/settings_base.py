"""One way to build a part's settings: explicit arguments, then ``EIOT_*`` environment
variables, then a TOML file (``--config`` or ``EIOT_CONFIG``), then defaults. Shared by the
agent and central (central imports the edge, never the other way)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

S = TypeVar("S", bound="TomlEnvSettings")


class TomlEnvSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EIOT_", env_nested_delimiter="__", extra="ignore", toml_file=None
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )


def build(cls: type[S], config_file: Path | str | None = None, **overrides: Any) -> S:
    """``cls`` from a TOML file (if any), the environment and ``overrides``."""
    path = config_file or os.environ.get("EIOT_CONFIG")
    if path is None:
        return cls(**overrides)
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    config = {**cls.model_config, "toml_file": Path(path)}
    from_file = type(f"{cls.__name__}FromFile", (cls,), {"model_config": config})
    settings: S = from_file(**overrides)
    return settings
