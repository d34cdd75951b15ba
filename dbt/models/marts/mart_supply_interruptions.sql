-- Load-shedding and faults as the transformer supply meters saw them: one row per run of
-- `supply = off` intervals of one transformer (int_supply_interruptions), for the timeline.

with

interruptions as (

    select * from {{ ref('int_supply_interruptions') }}
    where meter_role = 'transformer'

),

final as (

    select
        toDate(interruption_start_at) as start_date,
        interruption_start_at,
        interruption_end_at,
        duration_s / 3600 as duration_hours,
        is_sustained,
        meter_id,
        coalesce(transformer_id, 'unknown') as transformer_id,
        coalesce(feeder_id, 'unknown') as feeder_id,
        coalesce(region, 'unknown') as region

    from interruptions

)

select * from final
