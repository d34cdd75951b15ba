"""The fleet's registry as rows for raw.grid_assets and raw.meters, plus the ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from .config import FleetConfig
from .labels import LABEL_NAMES, category
from .theft import TheftPlan
from .topology import Topology

METER_KEYS = (
    "meter_id",
    "meter_role",
    "customer_class",
    "load_shape",
    "tariff",
    "transformer_id",
    "feeder_id",
    "region",
    "timezone",
    "latitude",
    "longitude",
    "gateway_id",
    "installed_at",
)
ASSET_KEYS = ("asset_id", "asset_type", "parent_id", "name", "rated_kva", "latitude", "longitude")


@dataclass
class Registry:
    meters: list[dict[str, Any]]  # keys: METER_KEYS (raw.meters columns)
    assets: list[dict[str, Any]]  # keys: ASSET_KEYS; regions, then feeders, then transformers


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_registry(cfg: FleetConfig, topo: Topology) -> Registry:
    zones = [r.timezone for r in cfg.region_specs]  # topology regions are these, in order
    assets: list[dict[str, Any]] = []
    for r, rid in enumerate(topo.region_ids):
        assets.append(
            {
                "asset_id": rid,
                "asset_type": "region",
                "parent_id": None,
                "name": topo.region_names[r],
                "rated_kva": None,
                "latitude": round(float(topo.region_lat[r]), 6),
                "longitude": round(float(topo.region_lon[r]), 6),
            }
        )
    for f, fid in enumerate(topo.feeder_ids):
        r = int(topo.feeder_region[f])
        assets.append(
            {
                "asset_id": fid,
                "asset_type": "feeder",
                "parent_id": topo.region_ids[r],
                "name": f"{topo.region_names[r]} feeder {f + 1}",
                "rated_kva": None,
                "latitude": round(float(topo.feeder_lat[f]), 6),
                "longitude": round(float(topo.feeder_lon[f]), 6),
            }
        )
    for x, xid in enumerate(topo.tx_ids):
        assets.append(
            {
                "asset_id": xid,
                "asset_type": "transformer",
                "parent_id": topo.feeder_ids[int(topo.tx_feeder[x])],
                "name": f"Distribution transformer {x + 1}",
                "rated_kva": float(topo.tx_kva[x]),
                "latitude": round(float(topo.tx_lat[x]), 6),
                "longitude": round(float(topo.tx_lon[x]), 6),
            }
        )

    start = datetime.fromtimestamp(cfg.start_epoch, UTC)
    class_names = [c.name for c in cfg.classes]
    # Installation data: a bursty fleet's homes are appliance-only connections.
    shape = "intermittent" if cfg.load_style == "bursty" else "continuous"
    gw_ids = [g.gateway_id for g in topo.gateways]
    meters: list[dict[str, Any]] = []
    lat = np.round(topo.cust_lat, 6).tolist()
    lon = np.round(topo.cust_lon, 6).tolist()
    for i, mid in enumerate(topo.cust_ids.tolist()):
        tx = int(topo.cust_tx[i])
        meters.append(
            {
                "meter_id": mid,
                "meter_role": "customer",
                "customer_class": class_names[int(topo.cust_class[i])],
                "load_shape": shape,
                "tariff": "prepaid" if topo.cust_prepaid[i] else "postpaid",
                "transformer_id": topo.tx_ids[tx] if tx >= 0 else None,
                "feeder_id": topo.feeder_ids[int(topo.cust_feeder[i])] if tx >= 0 else None,
                "region": topo.region_ids[int(topo.cust_region[i])],
                "timezone": zones[int(topo.cust_region[i])],
                "latitude": lat[i],
                "longitude": lon[i],
                "gateway_id": gw_ids[int(topo.cust_gateway[i])],
                "installed_at": _iso(start - timedelta(days=int(topo.cust_age_days[i]))),
            }
        )
    for g, gw in enumerate(topo.gateways):
        for x in gw.transformers.tolist():
            meters.append(
                {
                    "meter_id": topo.tx_meter_ids[x],
                    "meter_role": "transformer",
                    "customer_class": None,
                    "load_shape": None,
                    "tariff": None,
                    "transformer_id": topo.tx_ids[x],
                    "feeder_id": topo.feeder_ids[int(topo.tx_feeder[x])],
                    "region": topo.region_ids[int(topo.tx_region[x])],
                    "timezone": zones[int(topo.tx_region[x])],
                    "latitude": round(float(topo.tx_lat[x]), 6),
                    "longitude": round(float(topo.tx_lon[x]), 6),
                    "gateway_id": gw_ids[g],
                    "installed_at": None,
                }
            )
    return Registry(meters=meters, assets=assets)


def supply_info(topo: Topology, stages: np.ndarray) -> dict[str, Any]:
    """How each feeder is shed (not part of the SQL registry; written to registry.json)."""
    schemes = {0: "none", 1: "rotation", 2: "bands"}
    return {
        "daily_stage": [int(s) for s in stages[:-1]],
        "feeders": [
            {
                "feeder_id": fid,
                "scheme": schemes[int(topo.feeder_scheme[f])],
                "group": int(topo.feeder_group[f]),
                "band": topo.feeder_band[f] or None,
            }
            for f, fid in enumerate(topo.feeder_ids)
        ],
    }


def ground_truth(cfg: FleetConfig, topo: Topology, plan: TheftPlan) -> list[dict[str, Any]]:
    """One record per customer with an injected attack or fault, and per transformer with
    unmetered (illegally hooked-up) load."""
    out: list[dict[str, Any]] = []
    for i in np.flatnonzero(plan.code).tolist():
        label = LABEL_NAMES[int(plan.code[i])]
        onset = cfg.start_epoch + int(plan.onset_day[i]) * 86400
        params = plan.describe(i)
        if "donor_index" in params:
            params["donor_meter_id"] = str(topo.cust_ids[int(params.pop("donor_index"))])
        out.append(
            {
                "meter_id": str(topo.cust_ids[i]),
                "label": label,
                "category": category(label),
                "onset_day": int(plan.onset_day[i]),
                "onset_date": _iso(datetime.fromtimestamp(onset, UTC))[:10],
                "params": params,
            }
        )
    for x in np.flatnonzero(topo.tx_unmetered_kwh_day).tolist():
        out.append(
            {
                "meter_id": topo.tx_meter_ids[x],
                "label": "unmetered_load",
                "category": "theft",
                "onset_day": 0,
                "onset_date": _iso(datetime.fromtimestamp(cfg.start_epoch, UTC))[:10],
                "params": {"kwh_per_day": round(float(topo.tx_unmetered_kwh_day[x]), 3)},
            }
        )
    return out
