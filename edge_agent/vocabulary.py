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

#: A customer meter's load shape (a registry field; absent means ``continuous``). An
#: ``intermittent`` meter (mostly near zero, blocks at an appliance's power, as many lifeline homes)
#: is scored by forests fitted on intermittent meters. The shape is installation data or a central
#: decision over a meter's history (``ml.load_shape``), never taken from the readings the gateway
#: scores: a thief who zeroes readings must not choose the forest that judges them.
LOAD_SHAPES: tuple[str, ...] = ("continuous", "intermittent")

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

#: Kinds of a quarantine ``reason`` (a gateway's ``quarantine`` table, central's
#: ``raw.quarantine``), with what each means to whoever reads the row. A reason is the kind alone
#: or ``kind: detail`` (:func:`quarantine_reason`); central's metrics, the warehouse's
#: ``reason_kind`` and the dashboards group rows by the kind.
QUARANTINE_REASONS: dict[str, str] = {
    # input, on a gateway (and the same checks again at central)
    "malformed_json": "Not JSON, or JSON whose top level is not an object.",
    "empty_list": "A JSON list with nothing in it.",
    "not_an_object": "An item of a list that is not a reading object.",
    "not_utf8": "A line of a spool file that is not UTF-8 text.",
    "unreadable_file": "A spool file that could not be read to its end (the records before "
    "the fault were taken).",
    "invalid": "A reading that breaks the wire contract; the detail names the field.",
    "ts_in_future": "Stamped ahead of the receiver's clock (the gateway's or central's) by "
    "more than it allows.",
    "implausible_kwh": "More energy than the agent's max_kw allows in the interval.",
    "fields_dropped": "A polled reading's other fields (voltage, current...) were invalid: its "
    "energy was kept and these fields quarantined, with their reason.",
    "conflict": "Other values already stored for this meter and interval (the first stay).",
    # meters the agent reads itself (Modbus, DLMS/COSEM)
    "register_invalid": "A meter register that is not a finite number of kWh.",
    "register_jump": "The register rose more than max_kw allows since the last read (held "
    "until a later read confirms it).",
    "gap_too_long": "Energy read after more than a day unread: it cannot be spread over intervals.",
    "clock_back": "A read stamped before the meter's last one (the gateway's clock went back).",
    "profile_entry_invalid": "A DLMS load-profile entry the agent could not read.",
    "meter_clock_off": "A DLMS meter whose clock is too far from the gateway's: the times of "
    "its entries cannot be trusted.",
    # messages, at central's ingest
    "bad_topic": "A message on a topic that names no gateway.",
    "empty": "An empty message.",
    "oversize": "A message larger than the ingest accepts, or that inflates past it.",
    "bad_compression": "A compressed message that does not inflate.",
    "bad_encoding": "A message in no encoding the ingest knows.",
    "too_complex": "A message with more objects or values than the ingest accepts.",
    "unknown_schema": "A message of a schema the ingest does not know.",
    "invalid_envelope": "A batch of readings whose envelope breaks the contract.",
    "invalid_alert": "An alert that breaks the contract.",
    "invalid_status": "A status that breaks the contract.",
    "invalid_quarantine_record": "A gateway's quarantine record that breaks the contract.",
    "gateway_mismatch": "A payload naming another gateway than its topic does.",
    "reserved_kind": "An alert of a kind only central raises, sent by a gateway.",
    "meter_of_other_gateway": "A reading or alert of a meter registered to another gateway.",
    "ts_too_old": "A reading older than central accepts.",
    "batch_conflict": "A batch id already stored with other contents (never acknowledged).",
    "store_error": "The database refused the message; the detail says why.",
    "internal_error": "A fault in the ingest while handling the message (a bug to report).",
    "poison_message": "A message that stopped the ingest worker several times: set aside.",
}


def quarantine_reason(kind: str, detail: str = "") -> str:
    """A quarantine ``reason``: ``kind`` (one of :data:`QUARANTINE_REASONS`), then ``detail``."""
    if kind not in QUARANTINE_REASONS:
        raise ValueError(f"not a quarantine reason kind: {kind!r}")
    return f"{kind}: {detail}" if detail else kind


#: Identities of central services begin so (``svc-ingest-1``, ``svc-models``): a gateway id
#: never does, so no topic ``…/gw/<id>/…`` can name a service (``central.pki``).
SERVICE_PREFIX = "svc-"
