-- The daily energy balance of each transformer (mart_energy_balance at transformer level),
-- its place named and its losses 0 where the balance has none.

with

balances as (

    select * from {{ ref('mart_energy_balance') }}
    where asset_level = 'transformer'

),

final as (

    select
        balance_date,
        assumeNotNull(asset_id) as transformer_id,
        coalesce(feeder_id, 'unknown') as feeder_id,
        coalesce(region, 'unknown') as region,
        supplied_kwh,
        billed_kwh,
        coalesce(technical_loss_kwh, 0) as technical_loss_kwh,
        coalesce(unexplained_loss_kwh, 0) as unexplained_loss_kwh,
        data_completeness,
        is_loss_anomalous

    from balances

)

select * from final
