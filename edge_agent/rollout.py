"""Which anomaly model the agent scores with: load at start, hot-swap, refuse and report.

The agent holds one model per name (a :class:`~edge_agent.scoring.ModelBook`): the global model
``<model_name>`` and, for each model key of its meters (registry file or simulated fleet; see
:func:`edge_agent.registry.model_keys`), ``<model_name>.<key>`` if central publishes one: the class
model ``<model_name>.<class>`` (``ml`` trains per-class models when they beat the global one) and,
for intermittent meters, ``<model_name>.<class>.intermittent`` and ``<model_name>.intermittent``.
A meter uses the first of its keys that has a model, else the global one; at most
``max_models`` models score (``edge_agent.scoring.ModelBook``: the members left out are held,
not used, and the log and ``status.v1`` say which are in use).

Sources of ``model.v1`` messages, in order: the newest model of each name accepted before (the
buffer's ``models`` table, verified again with the key configured now), an optional
``model_path`` file (one message or a JSON list of them), then the retained messages on
``{root}/models/{name}`` (QoS1; the agent subscribes to each of its names on every connect). A
message is installed only when it verifies (checksum, Ed25519 signature with the configured public
key, feature names, a working ONNX graph), carries one of the agent's names and is newer
(``created_at``) than the model of that name in use. Anything else is refused: the old model
stays, a counter goes up and ``status.v1`` shows ``model_error``. The newest model of each name
ever accepted is remembered in the buffer: an older one (a replayed message) is refused
(``rollback``), also after a restart. A signed ``model_withdrawal.v1`` on a model's topic newer
than every model of that name withdraws it: dropped, forgotten, and no model created before the
withdrawal is accepted again; an empty retained message is not signed and is ignored. A class
model older than the global one is not used (a newer set without that class replaced it).
Without a model, ``status.v1`` says why in ``model_error`` (central raises ``scoring_off``).

The swap is one assignment on the agent's main loop, between two ``Intake.take`` calls: each call
scores all its readings with the book it started with, so every reading is scored by exactly one
version; once a global model is in, no accepted reading is left unscored (with class models only,
meters of other classes are stored unscored and counted, ``readings_without_model``).

onnxruntime is imported only when a model is actually loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_agent import wire
from edge_agent.buffer import Counters, Meta, ModelStore
from edge_agent.scoring import ActiveModels, ModelBook
from edge_agent.vocabulary import ID_PATTERN

if TYPE_CHECKING:
    from edge_agent.model import LoadedModel

log = logging.getLogger(__name__)


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        counters: Counters,
        meta: Meta,
        active: ActiveModels,
        *,
        name: str,
        public_key: str | None,
        clock: Callable[[], float],
        threads: int = 1,
        keys: Iterable[str] = (),
    ) -> None:
        if active.book.base != name:
            raise ValueError(f"the active models are named {active.book.base!r}, not {name!r}")
        self.store = store
        self.counters = counters
        self.meta = meta
        self.active = active
        self.name = name
        names = {name}
        for key in sorted(set(keys)):
            member = active.book.member_name(key)
            if re.fullmatch(ID_PATTERN, member):  # no MQTT wildcard or level separator
                names.add(member)
            else:
                log.warning("model key %r cannot name a model: its meters use others", key)
        self.names: frozenset[str] = frozenset(names)
        self.public_key = public_key.strip() if public_key and public_key.strip() else None
        self.clock = clock
        self.threads = threads
        self.error: str | None = None  # the last refusal, until that name gets a good model
        self._error_name: str | None = None
        self._loaded_at: dict[str, float] = {}
        self._inbox: queue.SimpleQueue[tuple[bytes, str]] = queue.SimpleQueue()
        self._batch = 0  # nesting of _settling
        self._left_out: list[str] = []  # the members max_models left out, as last said
        self._settled: ModelBook | None = None  # the book _settle last looked at

    def states(self) -> list[wire.ModelState]:
        """Every model in use, by name: the global one (a prefix of the others) first; not the
        members held but left out by ``max_models``."""
        book = self.active.book
        return [
            wire.ModelState(
                name=m.name,
                version=m.version,
                loaded_at=datetime.fromtimestamp(self._loaded_at[m.name], UTC),
            )
            for m in sorted(book.models.values(), key=lambda m: m.name)
            if m.name not in book.left_out
        ]

    # --- sources of models -----------------------------------------------------------------

    def start(self, model_path: Path | None = None) -> None:
        """The stored models, then the model file (if any). A stored model that no longer
        verifies or loads (a damaged card) gives way to the previous one of its name, verified
        again: the agent keeps scoring, and says so."""
        with self._settling():
            self._start(model_path)

    def _start(self, model_path: Path | None) -> None:
        for name in self.meta.prefixed(_IN_USE):
            self.meta.set(_IN_USE + name, "")  # nothing is in use before it is loaded again
        for name, stored in self.store.by_name().items():
            if name not in self.names:
                log.info("stored model %s is not one of this agent's names: not loaded", name)
                continue
            refused: str | None = None
            for i, model in enumerate(stored):
                if self.offer(model.message.encode(), "stored", persist=False, fallback=i > 0):
                    if i > 0:
                        log.warning("stored model of %s refused: fell back to an older one", name)
                        self.counters.add({"models_fallback": 1})
                    break
                refused = refused or self.error
            if refused is not None:
                self.error = f"stored model refused: {refused}"[:400]
                self._error_name = name
        if model_path is not None:
            self._offer_file(Path(model_path))

    def _offer_file(self, path: Path) -> None:
        """One ``model.v1`` message, or a JSON list of them (a whole model set: the members
        this gateway's meters do not use are skipped)."""
        source = f"file:{path}"
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._refuse("unreadable_file", str(exc), source)
            return
        if data.lstrip()[:1] != b"[":
            self.offer(data, source)
            return
        try:
            messages = json.loads(data)
        except ValueError as exc:
            self._refuse("invalid_message", f"not JSON: {exc}"[:200], source)
            return
        for message in messages:
            name = message.get("name") if isinstance(message, dict) else None
            other_class = isinstance(name, str) and name.startswith(self.name + ".")
            if other_class and name not in self.names:
                log.info("%s: model %s is for a class this gateway does not serve", source, name)
                continue
            self.offer(json.dumps(message).encode(), source)

    def on_message(self, payload: bytes, topic: str) -> None:
        """From the MQTT network thread: queue for the main loop."""
        self._inbox.put((payload, topic))

    def drain(self) -> bool:
        """Handle queued model messages (main loop). True if the model or the error changed."""
        with self._settling():
            return self._drain()

    def _drain(self) -> bool:
        changed = False
        while True:
            try:
                payload, topic = self._inbox.get_nowait()
            except queue.Empty:
                return changed
            before = (self.active.book, self.error)
            name = topic.rsplit("/", 1)[-1]
            if not payload:
                # A cleared retained message is not signed: anybody able to publish there could
                # send one. Withdrawals are signed messages (model_withdrawal.v1).
                log.warning("empty message on %s: not a withdrawal (unsigned), ignored", topic)
                self.counters.add({"models_clear_ignored": 1})
            else:
                self.offer(payload, f"mqtt:{topic}", name_hint=name)
            changed = changed or (self.active.book, self.error) != before

    def _withdraw(self, name: str) -> None:
        """Stop using the model ``name`` (and forget it, so a restart does not bring it back)."""
        book = self.active.book
        if name in book.models:
            self.active.book = book.without(name)
            self._loaded_at.pop(name, None)
            log.warning("model %s withdrawn by central: no longer used", name)
        self.store.forget(name)
        self.meta.set(_IN_USE + name, "")
        if self._error_name == name:
            self.error = None

    # --- the highest model accepted, per name (persisted: no rollback across restarts) ----

    def _high(self, name: str) -> tuple[str, str, str] | None:
        """(created_at, version, sha256) of the newest model of ``name`` ever accepted, or of
        its withdrawal (version ``WITHDRAWN``, above any)."""
        value = self.meta.get(_HIGH + name)
        if value is None:
            return None
        created, version, sha = json.loads(value)
        return str(created), str(version), str(sha)

    def _raise_high(self, name: str, created: str, version: str, sha: str) -> None:
        high = self._high(name)
        if high is None or (created, version) > high[:2]:
            self.meta.set(_HIGH + name, json.dumps([created, version, sha]))

    def status_error(self) -> str | None:
        """For status.v1: the last refusal, or why no model is in use."""
        if self.error is not None or self.active.book:
            return self.error
        if self.public_key is None:
            return "no_public_key: set model_public_key to accept models"
        for name in sorted(self.names):
            high = self._high(name)
            if high is not None and high[1] == WITHDRAWN:
                return f"withdrawn: central withdrew {name} (signed, {high[0]})"
        return "no_model: none received yet"

    def _withdrawal(self, obj: dict[str, Any], source: str, name_hint: str | None) -> bool:
        """A signed ``model_withdrawal.v1``: applied when it verifies and is newer than every
        model of that name accepted so far (a replayed old withdrawal is refused)."""
        if self.public_key is None:
            return self._refuse("no_public_key", "set model_public_key to accept models", source)
        from edge_agent.signing import ModelRejected, verify_withdrawal

        try:
            w = verify_withdrawal(obj, self.public_key)
        except ModelRejected as exc:
            return self._refuse(exc.reason, exc.detail, source, obj, name_hint)
        if w.name not in self.names:
            return self._refuse("name_mismatch", f"withdrawal of {w.name!r}", source, obj)
        created = _sortable(w.created_at)
        high = self._high(w.name)
        if high is not None and created <= high[0]:
            return self._refuse(
                "stale_withdrawal", f"of {created}, not after {high[0]}", source, obj, name_hint
            )
        self._withdraw(w.name)
        self._raise_high(w.name, created, WITHDRAWN, "")
        self.counters.add({"models_withdrawn_signed": 1})
        return True

    def offer(
        self,
        payload: bytes,
        source: str,
        *,
        persist: bool = True,
        name_hint: str | None = None,
        fallback: bool = False,
    ) -> bool:
        """Verify a ``model.v1`` payload and install it if it is newer. True if installed.
        ``name_hint``: the model name the topic it came on implies (for error reports).
        ``fallback``: an older model this agent accepted before, offered from its own store
        because the newer one is damaged (not a rollback: still verified in full)."""
        with self._settling():
            return self._offer(payload, source, persist, name_hint, fallback)

    @contextmanager
    def _settling(self) -> Iterator[None]:
        """Models arrive one at a time (a start, a model set's rollout): once the last of a
        batch is in, record which models score and say which ``max_models`` leaves out."""
        self._batch += 1
        try:
            yield
        finally:
            self._batch -= 1
            if not self._batch:
                self._settle()

    def _settle(self) -> None:
        book = self.active.book
        if book is self._settled:
            return
        self._settled = book
        left_out = book.left_out
        for name, model in book.models.items():
            in_use = "" if name in left_out else f"{model.version} {model.sha256}"
            if self.meta.get(_IN_USE + name) != in_use:
                self.meta.set(_IN_USE + name, in_use)
        if left_out and left_out != self._left_out:
            log.warning(
                "at most %d models score (max_models): %s held but not used; "
                "their meters fall back to their next model",
                book.limit,
                ", ".join(left_out),
            )
        self._left_out = left_out

    def _offer(
        self,
        payload: bytes,
        source: str,
        persist: bool,
        name_hint: str | None,
        fallback: bool,
    ) -> bool:
        try:
            obj = wire.decode(payload, wire.MODEL_LIMITS)
        except wire.DecodeError as exc:
            return self._refuse("invalid_message", str(exc), source, None, name_hint)
        if wire.schema_of(obj) == "model_withdrawal.v1":
            return self._withdrawal(obj, source, name_hint)
        if wire.schema_of(obj) != "model.v1":
            return self._refuse(
                "unknown_schema", repr(wire.schema_of(obj))[:40], source, None, name_hint
            )
        book = self.active.book
        current = book.models.get(str(obj.get("name")))
        if (
            current is not None
            and obj.get("version") == current.version
            and obj.get("sha256") == current.sha256
        ):
            return False  # the model in use (a retained message delivered again)
        if obj.get("name") not in self.names:
            wanted = ", ".join(sorted(self.names))
            return self._refuse(
                "name_mismatch",
                f"model {str(obj.get('name'))[:64]!r}, agent wants one of {wanted}",
                source,
                obj,
            )
        if self.public_key is None:
            return self._refuse("no_public_key", "set model_public_key to accept models", source)
        from edge_agent.model import ModelRejected, load_model, parse_public_key

        try:
            key = parse_public_key(self.public_key)
            model = load_model(obj, key, threads=self.threads, lazy=True)
        except ModelRejected as exc:
            return self._refuse(exc.reason, exc.detail, source, obj, name_hint)
        created = _sortable(model.created_at) if model.created_at else ""
        high = self._high(model.name)
        if not fallback and high is not None and (created, model.version) < high[:2]:
            what = "a withdrawal" if high[1] == WITHDRAWN else f"{high[1]} ({high[0]})"
            return self._refuse("rollback", f"older than {what}", source, obj, name_hint)
        if high is not None and (created, model.version) == high[:2] and model.sha256 != high[2]:
            return self._refuse(
                "version_reused", "same version, other content", source, obj, name_hint
            )
        if current is not None and not _newer(model, current):
            log.info(
                "model %s %s from %s is not newer than %s: ignored",
                model.name,
                model.version,
                source,
                current.version,
            )
            self.counters.add({"models_ignored_not_newer": 1})
            return False
        self._raise_high(model.name, created, model.version, model.sha256)
        if persist:
            self.store.save(
                name=model.name,
                version=model.version,
                created_at=wire.iso_z(model.created_at) if model.created_at else "",
                sha256=model.sha256,
                message=json.dumps(obj, separators=(",", ":")),
                public_key_sha256=hashlib.sha256(key).hexdigest(),
                now=self.clock(),
            )
        self.active.book = book.with_model(model)  # the swap: the next Intake.take uses it
        self._loaded_at[model.name] = self.clock()
        if self._error_name in (None, model.name):
            self.error = None
        log.info(
            "scoring with model %s %s (threshold %g) from %s",
            model.name,
            model.version,
            model.threshold,
            source,
        )
        return True

    def _refuse(
        self,
        reason: str,
        detail: str,
        source: str,
        obj: dict[str, Any] | None = None,
        name_hint: str | None = None,
    ) -> bool:
        what = ""
        if obj is not None:
            what = f" (model {str(obj.get('name'))[:64]} {str(obj.get('version'))[:64]})"
        self.error = f"{reason}{what}: {detail}"[:400]
        self._error_name = str(obj.get("name")) if obj is not None else name_hint
        kept = self.active.book.models.get(str(obj.get("name"))) if obj else None
        log.error(
            "model from %s refused: %s; %s",
            source,
            self.error,
            f"keeping {kept.name} {kept.version}" if kept else "no model of that name in use",
        )
        self.counters.add({"models_rejected": 1, f"models_rejected_{reason}": 1})
        return False


# Meta key of a name's highest accepted model; the version that marks a withdrawal sorts above
# every real version (ids are ASCII).
_HIGH = "model_high:"
# Meta key of the model of a name the agent scores with now ("<version> <sha256>", "" for none):
# what ``edge-agent status`` shows.
_IN_USE = "model_in_use:"
WITHDRAWN = "\uffff withdrawn"


def _sortable(at: datetime) -> str:
    """A time as text that sorts as the time does (fixed width, microseconds, UTC)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _newer(candidate: LoadedModel, current: LoadedModel) -> bool:
    if candidate.created_at is None or current.created_at is None:
        return candidate.version != current.version
    if candidate.created_at != current.created_at:
        return candidate.created_at > current.created_at
    return candidate.version > current.version


def models_in_use(meta: Meta) -> dict[str, str]:
    """``{name: version}`` of the models the agent scores with (as it last recorded)."""
    return {n: v.split(" ")[0] for n, v in sorted(meta.prefixed(_IN_USE).items()) if v}
