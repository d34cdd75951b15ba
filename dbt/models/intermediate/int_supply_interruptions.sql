-- Supply interruptions seen by each meter: runs of consecutive `supply = off` intervals.
-- A run starts at the beginning of its first interval and ends at the end of its last one; a
-- missing or `on` interval ends it.

with

off_readings as (

    select
        meter_id,
        reading_at,
        interval_s

    from {{ ref('stg_readings') }}
    where not is_supply_on

),

marked as (

    select
        meter_id,
        reading_at,
        interval_s,
        lagInFrame(reading_at, 1, toDateTime64(0, 3, 'UTC')) over (
            partition by meter_id order by reading_at
            rows between unbounded preceding and current row
        ) as previous_off_at

    from off_readings

),

numbered as (

    select
        meter_id,
        reading_at,
        interval_s,
        sum(toUInt32(previous_off_at != reading_at - toIntervalSecond(interval_s))) over (
            partition by meter_id order by reading_at
            rows between unbounded preceding and current row
        ) as run_number

    from marked

),

runs as (

    select
        meter_id,
        run_number,
        min(reading_at - toIntervalSecond(interval_s)) as interruption_start_at,
        max(reading_at) as interruption_end_at,
        toUInt32(sum(interval_s)) as duration_s,
        count() as interval_count

    from numbered
    group by meter_id, run_number

),

meters as (

    select * from {{ ref('stg_meters') }}

),

final as (

    select
        runs.meter_id as meter_id,
        runs.interruption_start_at as interruption_start_at,
        runs.interruption_end_at as interruption_end_at,
        runs.duration_s as duration_s,
        runs.interval_count as interval_count,
        runs.duration_s > {{ var('sustained_interruption_min_s') }} as is_sustained,
        if(meters.meter_id = '', 'unregistered', meters.meter_role) as meter_role,
        meters.transformer_id as transformer_id,
        meters.feeder_id as feeder_id,
        meters.region as region

    from runs
    left join meters on runs.meter_id = meters.meter_id

)

select * from final
