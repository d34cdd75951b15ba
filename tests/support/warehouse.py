"""The simulated fleet the warehouse tests build marts from."""

from __future__ import annotations

from simulator.warehouse_fleet import WarehouseFleet


def marts_fleet() -> WarehouseFleet:
    """120 customer meters under 6 transformers, two with meters bypassed half-way, 14 days."""
    return WarehouseFleet(
        meters=120,
        days=14,
        seed=7,
        customers_per_transformer=20,
        transformers_per_feeder=3,
        theft_transformer_share=0.34,
    )
