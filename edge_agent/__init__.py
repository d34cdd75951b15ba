"""The gateway agent: validate meter readings, keep them safe in SQLite through outages,
forward them to central over MQTT, exactly once in effect."""

__version__ = "0.1.0"
