"""Identifier patterns and closed vocabularies, defined once for every part of the project.

The gateway validates with them, central and the warehouse store them, the dbt project reads
them as variables (``dbt_project.yml``), the Great Expectations suites import them; a test
(``tests/test_definitions.py``) fails when a copy anywhere drifts from this module. Standard
library only: the gateway imports it on its light path.
"""

from __future__ import annotations

#: Reading intervals a meter may report, in seconds (5 minutes to a day).
MIN_INTERVAL_S = 300
MAX_INTERVAL_S = 86400
#: A hard ceiling any single meter respects (a large distribution transformer meter): interval
#: energy above max_kw * hours is not a reading but a fault. Agents may configure tighter bounds.
WIRE_MAX_KW = 5000.0

#: ``meter_id``, ``gateway_id``, model names and versions, batch ids. Case-sensitive; no MQTT
#: wildcard (``+``, ``#``) and no topic level separator (``/``), so an id can name a topic level.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
#: A meter event flag: lowercase snake case.
FLAG_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"

#: Meter events that mean somebody touched the meter (tamper alerts, ``has_tamper_flag``).
TAMPER_FLAGS: tuple[str, ...] = ("cover_open", "magnetic", "reverse_flow", "clock_reset")
#: A prepaid meter switched off for lack of credit: zero use is expected then, not theft.
NO_CREDIT_FLAG = "no_credit"
#: Every flag the project gives a meaning to, in bit order (bit ``i`` of a flag mask is
#: ``METER_FLAGS[i]`` in the simulator, the features and the training data). Meters may send
#: other flags matching ``FLAG_PATTERN``: they are stored and carried, and mean nothing here.
METER_FLAGS: tuple[str, ...] = (*TAMPER_FLAGS, NO_CREDIT_FLAG)

#: ``supply`` of a reading: "off" = no grid supply during the interval (load-shedding, a fault).
SUPPLY_STATES: tuple[str, ...] = ("on", "off")

#: ``kind`` of an ``alert.v1``.
ALERT_KINDS: tuple[str, ...] = (
    "anomaly",
    "tamper",
    "register_rollback",
    "supply_loss",
    "energy_balance",
    "buffer_full",  # the gateway's buffer reached its byte budget: intake paused
    "disk_full",  # the gateway's disk is (nearly) full: intake paused
    "clock_suspect",  # the gateway's wall clock stepped, or is behind the latest time it saw
    "scoring_off",  # central: a gateway scores nothing (no model, or its model refused)
    "meter_unreachable",  # a meter the gateway polls has not answered for several intervals
)
#: Kinds only central raises: refused on a gateway's alerts topic.
CENTRAL_ALERT_KINDS: tuple[str, ...] = ("scoring_off",)

#: Identities of central services begin so (``svc-ingest-1``, ``svc-models``): a gateway id
#: never does, so no topic ``…/gw/<id>/…`` can name a service (``central.pki``).
SERVICE_PREFIX = "svc-"
