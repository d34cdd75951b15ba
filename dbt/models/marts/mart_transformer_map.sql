-- One row per transformer with a location: its energy balance over the most recent
-- `inspection_window_days` days of data, and a loss band for the map's colours.

{%- set alert_pct = var('unexplained_loss_alert_pct') %}
{%- set severe_pct = var('severe_loss_pct') %}

with

balances as (

    select * from {{ ref('mart_energy_balance') }}
    where asset_level = 'transformer'

),

assets as (

    select * from {{ ref('stg_grid_assets') }}
    where asset_type = 'transformer' and latitude is not null and longitude is not null

),

window_start as (

    select max(balance_date) - {{ var('inspection_window_days') }} + 1 as first_date
    from balances

),

recent as (

    select
        assumeNotNull(asset_id) as transformer_id,
        any(coalesce(region, 'unknown')) as region,
        sum(supplied_kwh) as supplied_kwh,
        sum(billed_kwh) as billed_kwh,
        sum(coalesce(unexplained_loss_kwh, 0)) as unexplained_loss_kwh,
        min(is_complete) as is_complete,
        count() as balance_days

    from balances
    where balance_date >= (select window_start.first_date from window_start)
    group by transformer_id

),

final as (

    select
        recent.transformer_id as transformer_id,
        recent.region as region,
        coalesce(assets.parent_id, 'unknown') as feeder_id,
        assumeNotNull(assets.latitude) as latitude,
        assumeNotNull(assets.longitude) as longitude,
        recent.supplied_kwh as supplied_kwh,
        recent.billed_kwh as billed_kwh,
        recent.unexplained_loss_kwh as unexplained_loss_kwh,
        if(supplied_kwh > 0, 100 * unexplained_loss_kwh / supplied_kwh, 0) as unexplained_loss_pct,
        multiIf(
            recent.is_complete = 0, 'incomplete data',
            unexplained_loss_pct >= {{ severe_pct }}, 'loss >= {{ severe_pct }} %',
            unexplained_loss_pct >= {{ alert_pct }}, 'loss {{ alert_pct }}-{{ severe_pct }} %',
            'loss < {{ alert_pct }} %'
        ) as loss_band,
        recent.balance_days as balance_days

    from recent
    inner join assets on recent.transformer_id = assets.asset_id

)

select * from final
