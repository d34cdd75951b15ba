-- Energy balance per transformer and per feeder and day: what went in (supply meters), what
-- was billed (customer meters), what the network is expected to lose, and the rest, the
-- unexplained loss (theft, unmetered hook-ups, faulty meters). Utilities locate theft here.

with

transformer_days as (

    select * from {{ ref('int_transformer_energy_daily') }}

),

transformers as (

    select
        asset_id as transformer_id,
        rated_kva

    from {{ ref('stg_grid_assets') }}
    where asset_type = 'transformer'

),

transformer_loss as (

    select
        d.reading_date as balance_date,
        d.transformer_id as transformer_id,
        d.feeder_id as feeder_id,
        d.region as region,
        d.supplied_kwh as supplied_kwh,
        d.billed_kwh as billed_kwh,
        d.customer_meter_count as customer_meter_count,
        least(d.supply_completeness, d.customer_completeness) as data_completeness,
        -- Load-dependent technical loss: base + slope * utilisation (mean kW / rated kVA).
        if(
            t.rated_kva > 0, d.supplied_kwh / 24 / t.rated_kva, 0
        ) as utilisation,
        least(
            {{ var('technical_loss_base_ratio') }}
            + {{ var('technical_loss_load_slope') }} * utilisation,
            {{ var('technical_loss_max_ratio') }}
        ) * d.supplied_kwh as technical_loss_kwh

    from transformer_days as d
    left join transformers as t on d.transformer_id = t.transformer_id

),

transformer_balance as (

    select
        balance_date,
        'transformer' as asset_level,
        transformer_id as asset_id,
        feeder_id,
        region,
        customer_meter_count,
        supplied_kwh,
        billed_kwh,
        technical_loss_kwh,
        data_completeness,
        utilisation

    from transformer_loss

),

feeder_balance as (

    select
        balance_date,
        'feeder' as asset_level,
        assumeNotNull(feeder_id) as asset_id,
        feeder_id,
        any(region) as region,
        sum(customer_meter_count) as customer_meter_count,
        sum(supplied_kwh) as supplied_kwh,
        sum(billed_kwh) as billed_kwh,
        sum(technical_loss_kwh) as technical_loss_kwh,
        min(data_completeness) as data_completeness,
        cast(null as Nullable(Float64)) as utilisation

    from transformer_loss
    where feeder_id is not null
    group by balance_date, feeder_id

),

unioned as (

    select * from transformer_balance
    union all
    select * from feeder_balance

),

final as (

    select
        balance_date,
        asset_level,
        asset_id,
        feeder_id,
        region,
        customer_meter_count,
        supplied_kwh,
        billed_kwh,
        technical_loss_kwh,
        supplied_kwh - billed_kwh - technical_loss_kwh as unexplained_loss_kwh,
        supplied_kwh - billed_kwh as total_loss_kwh,
        if(supplied_kwh > 0, 100 * total_loss_kwh / supplied_kwh, null) as total_loss_pct,
        if(
            supplied_kwh > 0, 100 * unexplained_loss_kwh / supplied_kwh, null
        ) as unexplained_loss_pct,
        utilisation,
        data_completeness,
        data_completeness >= {{ var('min_balance_completeness') }} as is_complete,
        is_complete
        and coalesce(unexplained_loss_pct, 0) > {{ var('unexplained_loss_alert_pct') }}
            as is_loss_anomalous

    from unioned

)

select * from final
