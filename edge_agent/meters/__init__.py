"""Talking to meters directly: the Modbus protocol and the register maps of meter models
(standard library and pydantic only: the gateway's light install)."""
