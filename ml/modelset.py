"""The gateway's reading-level model(s): one global IsolationForest, or one per customer class
(with the global one as the fallback for meters of an unknown class), trained on a
:class:`~ml.dataset.MeterData`, exported to ONNX, written to / read from a directory.

Meters of the ``intermittent`` load shape (``ml.load_shape``) get forests of their own: one over
every class (``<name>.intermittent``) in both variants and, in the per-class one, one per class
(``<name>.<class>.intermittent``). Every member is fitted on the meters it scores (the global
one on every meter when no intermittent member is fitted, or when too few meters are left).
Which member scores a meter is :func:`edge_agent.registry.model_keys`, the gateway's own rule; a
class named like a load shape, or whose member's name would not be a valid model name, gets no
member of its own.

Which variant wins is measured, not assumed (:func:`train_model_set` with ``variant="auto"``):
the labelled training customers are split by meter (75 % fit, 25 % validation), both variants are
fitted on the first part and the one with the higher reading-level PR-AUC (theft readings vs
normal readings) on the validation meters is kept. Without labels the global model is kept.

Members are calibrated (:mod:`ml.calibration`): their output is a level among their own normal
training readings, on one scale for every member. Scores compared across members are margins,
``score - threshold`` (> 0: alert), so one ranking can mix meters scored by different members.

Directory layout (``write``/``read``)::

    model.json            manifest (schema "eiot.ml.modelset.v1", see ModelSet.manifest)
    <member name>.onnx    one fast ONNX graph per member (ml.onnx_export)
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent.features import FEATURE_NAMES
from edge_agent.model import LoadedModel
from edge_agent.registry import CONTINUOUS, INTERMITTENT, model_keys
from edge_agent.vocabulary import ID_PATTERN
from ml.calibration import Calibration
from ml.dataset import MeterData
from ml.metrics import pr_auc, roc_auc
from ml.train import DEFAULT_ALERT_RATE, DEFAULT_MAX_FALSE_ALARM_RATE, DEFAULT_MAX_SAMPLES, train

MANIFEST = "model.json"
MANIFEST_SCHEMA = "eiot.ml.modelset.v1"
VARIANTS = ("auto", "global", "per_class")
DEFAULT_NAME = "iforest"
#: A class gets its own model only with at least this many training meters.
MIN_CLASS_METERS = 20


def member_key(customer_class: str, load_shape: str) -> str:
    """A member's name after the set's: the first of the gateway's model keys for its class and
    shape (``""``: the global member)."""
    return (model_keys(customer_class, load_shape) or ("",))[0]


def member_name(set_name: str, customer_class: str, load_shape: str) -> str:
    """The published name of the set's member for a class and shape (``iforest``,
    ``iforest.urban``, ``iforest.urban.intermittent``, ``iforest.intermittent``)."""
    key = member_key(customer_class, load_shape)
    return f"{set_name}.{key}" if key else set_name


def usable_class(customer_class: str, set_name: str = DEFAULT_NAME) -> bool:
    """Whether a class can have members of its own: not named like a load shape, and the
    longest of its member names a valid model name (``ID_PATTERN``)."""
    try:
        keys = model_keys(customer_class, INTERMITTENT)
    except ValueError:
        return False
    return all(re.fullmatch(ID_PATTERN, f"{set_name}.{k}") for k in keys)


def key_parts(set_name: str, member_name: str) -> tuple[str, str]:
    """``(customer_class, load_shape)`` of the member ``member_name`` of the set ``set_name``,
    read back from its name (:func:`member_key`; a class is never named like a load shape)."""
    if member_name == set_name:
        return "", CONTINUOUS
    if not member_name.startswith(set_name + "."):
        raise ValueError(f"{member_name!r} is not a member of the set {set_name!r}")
    key = member_name[len(set_name) + 1 :]
    if key == INTERMITTENT:
        return "", INTERMITTENT
    suffix = "." + INTERMITTENT
    if key.endswith(suffix):
        return key.removesuffix(suffix), INTERMITTENT
    return key, CONTINUOUS


@dataclass
class Member:
    """One published model: ``customer_class == ""`` for the global one."""

    name: str
    customer_class: str
    onnx: bytes
    threshold: float
    threshold_method: str
    train_rows: int
    metrics: dict[str, float] = field(default_factory=dict)
    #: The graph outputs levels (``threshold`` is one); None: raw anomaly scores.
    calibration: Calibration | None = None
    load_shape: str = CONTINUOUS

    @property
    def key(self) -> str:
        """The member's name after the set's (``""`` for the global one): see
        :func:`~edge_agent.registry.model_keys`."""
        return member_key(self.customer_class, self.load_shape)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.onnx).hexdigest()

    @property
    def offset(self) -> float:
        """scikit-learn's ``offset_`` (``decision_function = score_samples - offset_``): minus
        the threshold as a raw anomaly score."""
        if self.calibration is None:
            return -self.threshold
        return -self.calibration.raw_of(self.threshold)


@dataclass
class ModelSet:
    name: str
    version: str
    variant: str  # "global" | "per_class"
    created_at: datetime
    interval_s: int
    members: list[Member]
    feature_names: tuple[str, ...] = FEATURE_NAMES
    training: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    #: With ``variant="auto"``: the members of both variants (not written to disk).
    candidates: dict[str, list[Member]] = field(default_factory=dict, repr=False)

    def member_for(self, customer_class: str, load_shape: str = CONTINUOUS) -> Member:
        by_key = {m.key: m for m in self.members}
        if not usable_class(customer_class, self.name):
            customer_class = ""  # as on a gateway: such a class names no member
        for key in (*model_keys(customer_class, load_shape), ""):
            if key in by_key:
                return by_key[key]
        raise LookupError("model set has no global member")

    def manifest(self) -> dict[str, Any]:
        return {
            "schema": MANIFEST_SCHEMA,
            "name": self.name,
            "version": self.version,
            "variant": self.variant,
            "created_at": self.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "interval_s": self.interval_s,
            "feature_names": list(self.feature_names),
            "members": [
                {
                    "name": m.name,
                    "customer_class": m.customer_class,
                    "load_shape": m.load_shape,
                    "file": f"{m.name}.onnx",
                    "sha256": m.sha256,
                    "threshold": m.threshold,
                    "offset": m.offset,
                    "threshold_method": m.threshold_method,
                    "train_rows": m.train_rows,
                    "metrics": m.metrics,
                    "calibration": None if m.calibration is None else m.calibration.knots(),
                }
                for m in self.members
            ],
            "training": self.training,
            "validation": self.validation,
        }

    def write(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            (out / f"{m.name}.onnx").write_bytes(m.onnx)
        path = out / MANIFEST
        path.write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> ModelSet:
        folder = Path(directory)
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("schema") != MANIFEST_SCHEMA:
            raise ValueError(f"{folder / MANIFEST} is not a {MANIFEST_SCHEMA} manifest")
        members = []
        for m in manifest["members"]:
            onnx = (folder / m["file"]).read_bytes()
            if hashlib.sha256(onnx).hexdigest() != m["sha256"]:
                raise ValueError(f"{m['file']}: sha256 differs from the manifest")
            members.append(
                Member(
                    name=m["name"],
                    customer_class=m["customer_class"],
                    onnx=onnx,
                    threshold=float(m["threshold"]),
                    threshold_method=m["threshold_method"],
                    train_rows=int(m["train_rows"]),
                    metrics=dict(m.get("metrics", {})),
                    calibration=(
                        Calibration.from_knots(m["calibration"]) if m.get("calibration") else None
                    ),
                    load_shape=m.get("load_shape", CONTINUOUS),
                )
            )
        created = datetime.strptime(manifest["created_at"], "%Y-%m-%dT%H:%M:%SZ")
        return cls(
            name=manifest["name"],
            version=manifest["version"],
            variant=manifest["variant"],
            created_at=created.replace(tzinfo=UTC),
            interval_s=int(manifest["interval_s"]),
            members=members,
            feature_names=tuple(manifest["feature_names"]),
            training=manifest.get("training", {}),
            validation=manifest.get("validation", {}),
        )

    def sessions(self, threads: int = 1) -> dict[str, LoadedModel]:
        """An onnxruntime session per member, as the gateway builds them."""
        return {
            m.name: LoadedModel(
                m.onnx,
                name=m.name,
                version=self.version,
                threshold=m.threshold,
                feature_names=self.feature_names,
                threads=threads,
            )
            for m in self.members
        }

    def margins(
        self,
        features: npt.NDArray[np.float32],
        customer_class: npt.ArrayLike,
        rows: npt.NDArray[np.bool_],
        *,
        load_shape: npt.ArrayLike | None = None,
        threads: int = 1,
    ) -> npt.NDArray[np.float64]:
        """``score - threshold`` of the member for each meter's class and load shape (default
        continuous), ``(T, M)``, for the ``rows`` (``(T, M)`` bool) of ``features``
        ``(T, M, F)``; 0 elsewhere."""
        sessions = self.sessions(threads)
        classes = np.asarray(customer_class, dtype=str)
        shapes = np.full(classes.shape, CONTINUOUS) if load_shape is None else load_shape
        out = np.zeros(rows.shape, np.float64)
        by_member: dict[str, list[int]] = {}
        pairs = zip(classes.tolist(), np.asarray(shapes).tolist(), strict=True)
        for j, (c, shape) in enumerate(pairs):
            by_member.setdefault(self.member_for(c, shape).name, []).append(j)
        for name, cols_list in by_member.items():
            cols = np.asarray(cols_list)
            sub_rows = rows[:, cols]
            if not sub_rows.any():
                continue
            x = features[:, cols][sub_rows]
            model = sessions[name]
            scores = _score_in_batches(model, x)
            block = np.zeros(sub_rows.shape)
            block[sub_rows] = scores - model.threshold
            out[:, cols] = block
        return out


def _score_in_batches(
    model: LoadedModel, x: npt.NDArray[np.float32], batch: int = 500_000
) -> npt.NDArray[np.float64]:
    out = np.empty(x.shape[0], np.float64)
    for lo in range(0, x.shape[0], batch):
        out[lo : lo + batch] = model.score(x[lo : lo + batch])
    return out


def default_version(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _codes(data: MeterData, names: Sequence[str]) -> npt.NDArray[np.int64]:
    return np.array([i for i, n in enumerate(data.label_names) if n in set(names)], np.int64)


def reading_labels(data: MeterData) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None:
    """``(theft, normal)`` per reading from the simulator's labels; None without labels."""
    if data.label_code is None:
        return None
    from simulator import THEFT_LABELS

    theft = np.isin(data.label_code, _codes(data, THEFT_LABELS))
    return theft, data.label_code == 0


def _fit_member(
    name: str,
    customer_class: str,
    load_shape: str,
    x: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_] | None,
    *,
    max_rows: int,
    rng: np.random.Generator,
    random_state: int,
    alert_rate: float,
    max_false_alarm_rate: float,
    samples_per_tree: int,
) -> Member:
    if x.shape[0] > max_rows:
        pick = np.sort(rng.choice(x.shape[0], max_rows, replace=False))
        x = x[pick]
        labels = None if labels is None else labels[pick]
    trained = train(
        x,
        labels=labels,
        alert_rate=alert_rate,
        max_false_alarm_rate=max_false_alarm_rate,
        random_state=random_state,
        max_samples=samples_per_tree,
    )
    return Member(
        name=name,
        customer_class=customer_class,
        load_shape=load_shape,
        onnx=trained.onnx(),
        threshold=trained.published_threshold,
        threshold_method=trained.threshold_method,
        train_rows=trained.train_rows,
        metrics={k: float(v) for k, v in trained.metrics.items()},
        calibration=trained.calibration,
    )


def member_groups(
    classes: npt.NDArray[np.str_],
    shapes: npt.NDArray[np.str_],
    fit_meters: npt.NDArray[np.bool_],
    per_class: bool,
    name: str = DEFAULT_NAME,
) -> dict[tuple[str, str], npt.NDArray[np.bool_]]:
    """The members to fit, ``(customer_class, load_shape)``, each with the meters it is fitted
    on: the intermittent one on every intermittent meter, the global one on every other meter
    (on every meter when there are too few others, or no intermittent member), and
    (``per_class``) a class's members on the meters they would score. A member needs
    :data:`MIN_CLASS_METERS` meters, except the global one."""
    inter = fit_meters & (shapes == INTERMITTENT)
    groups = {("", CONTINUOUS): fit_meters}
    if inter.sum() >= MIN_CLASS_METERS:
        groups[("", INTERMITTENT)] = inter
        if (fit_meters & ~inter).sum() >= MIN_CLASS_METERS:
            groups[("", CONTINUOUS)] = fit_meters & ~inter
    if not per_class:
        return groups
    names = sorted(c for c in set(classes[fit_meters].tolist()) - {""} if usable_class(c, name))
    for c in names:
        cols = inter & (classes == c)
        if cols.sum() >= MIN_CLASS_METERS:
            groups[(c, INTERMITTENT)] = cols
    # a class's own forest scores the meters of the class no intermittent forest takes
    taken = np.zeros_like(fit_meters)
    for (_, shape), cols in groups.items():
        if shape == INTERMITTENT:
            taken |= cols
    for c in names:
        cols = fit_meters & (classes == c) & ~taken
        if cols.sum() >= MIN_CLASS_METERS:
            groups[(c, CONTINUOUS)] = cols
    return groups


def _fit_variant(
    variant: str,
    name: str,
    features: npt.NDArray[np.float32],
    rows: npt.NDArray[np.bool_],
    anomalous: npt.NDArray[np.bool_] | None,
    classes: npt.NDArray[np.str_],
    shapes: npt.NDArray[np.str_],
    fit_meters: npt.NDArray[np.bool_],
    *,
    max_rows: int,
    seed: int,
    alert_rate: float,
    max_false_alarm_rate: float,
    samples_per_tree: int,
) -> list[Member]:
    rng = np.random.default_rng(seed)
    kwargs: dict[str, Any] = {
        "rng": rng,
        "random_state": seed,
        "alert_rate": alert_rate,
        "max_false_alarm_rate": max_false_alarm_rate,
        "samples_per_tree": samples_per_tree,
    }
    members = []
    for (c, shape), cols in member_groups(
        classes, shapes, fit_meters, variant == "per_class", name
    ).items():
        sel = rows & cols[None, :]
        x, y = features[sel], None if anomalous is None else anomalous[sel]
        members.append(
            _fit_member(member_name(name, c, shape), c, shape, x, y, max_rows=max_rows, **kwargs)
        )
    return members


def train_model_set(
    data: MeterData,
    features: npt.NDArray[np.float32],
    *,
    name: str = DEFAULT_NAME,
    version: str | None = None,
    variant: str = "auto",
    warmup_days: float = 7.0,
    max_rows: int = 300_000,
    validation_share: float = 0.25,
    seed: int = 0,
    alert_rate: float = DEFAULT_ALERT_RATE,
    max_false_alarm_rate: float = DEFAULT_MAX_FALSE_ALARM_RATE,
    threads: int = 1,
    created_at: datetime | None = None,
    samples_per_tree: int = DEFAULT_MAX_SAMPLES,
) -> ModelSet:
    """Train the gateway model(s) on the customer readings after ``warmup_days`` (the feature
    history). ``variant``: ``global``, ``per_class`` or ``auto`` (measure both, keep the better;
    see module docstring). Labels (simulator) make the forests fit on normal readings and
    choose their thresholds by F1 under a false-alarm cap (``ml.train``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    created = created_at or datetime.now(UTC)
    start = data.window_start(warmup_days)
    if start >= data.n_intervals:
        raise ValueError("no readings after the warm-up days")
    customers = data.customers
    rows = data.present.copy()
    rows[:start] = False
    rows &= customers[None, :]
    labels = reading_labels(data)
    anomalous = None if data.label_code is None else data.label_code > 0
    shapes = data.load_shapes
    common: dict[str, Any] = {
        "max_rows": max_rows,
        "samples_per_tree": samples_per_tree,
        "seed": seed,
        "alert_rate": alert_rate,
        "max_false_alarm_rate": max_false_alarm_rate,
    }

    def fit(variant: str, meters: npt.NDArray[np.bool_]) -> list[Member]:
        return _fit_variant(
            variant, name, features, rows, anomalous, data.customer_class, shapes, meters, **common
        )

    validation: dict[str, Any] = {}
    candidates: dict[str, list[Member]] = {}
    chosen = "global" if variant == "auto" and labels is None else variant
    fit_meters = customers.copy()
    if chosen == "auto":
        assert labels is not None
        theft, normal = labels
        rng = np.random.default_rng(seed + 1)
        held = customers & (rng.random(data.n_meters) < validation_share)
        fit_meters = customers & ~held
        val_rows = rows & held[None, :] & (theft | normal)
        results: dict[str, dict[str, Any]] = {}
        for v in ("global", "per_class"):
            members = fit(v, fit_meters)
            trial = ModelSet(name, "validation", v, created, data.interval_s, members)
            m = trial.margins(
                features, data.customer_class, val_rows, load_shape=shapes, threads=threads
            )
            y, s = theft[val_rows], m[val_rows]
            results[v] = {
                "pr_auc": pr_auc(y, s),
                "roc_auc": roc_auc(y, s),
                "alert_rate_normal": float((s[~y] > 0).mean()) if (~y).any() else None,
                "members": len(members),
            }
            candidates[v] = members
        g, p = results["global"]["pr_auc"] or 0.0, results["per_class"]["pr_auc"] or 0.0
        chosen = "per_class" if p > g else "global"
        validation = {
            "criterion": "reading-level PR-AUC (theft vs normal) on held-out training meters",
            "validation_meters": int(held.sum()),
            "fit_meters": int(fit_meters.sum()),
            "results": results,
            "chosen": chosen,
        }
        members = candidates[chosen]
    else:
        members = fit(chosen, fit_meters)
    first, last = data.window_bounds(start)
    training = {
        "source": data.source,
        "window_start": first.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_end": last.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "warmup_days": warmup_days,
        "customers": int(customers.sum()),
        "intermittent_meters": int((customers & (shapes == INTERMITTENT)).sum()),
        "fit_meters": int(fit_meters.sum()),
        "labelled": labels is not None,
        "max_rows_per_model": max_rows,
        "samples_per_tree": samples_per_tree,
        "seed": seed,
        "alert_rate": alert_rate,
        "max_false_alarm_rate": max_false_alarm_rate,
    }
    return ModelSet(
        name=name,
        version=version or default_version(created),
        variant=chosen,
        created_at=created.replace(microsecond=0),
        interval_s=data.interval_s,
        members=members,
        training=training,
        validation=validation,
        candidates=candidates,
    )
