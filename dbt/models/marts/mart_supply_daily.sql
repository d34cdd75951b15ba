-- Hours of grid supply per feeder and day, as its transformer supply meters saw them, against
-- the hours the utility promised the feeder's service band (var `promised_supply_hours`).
-- A transformer's supply hours scale its on-share of the intervals received to 24 h, so a
-- missing reading is not counted as an outage.

with

daily as (

    select * from {{ ref('int_readings_daily') }}

),

supply_meters as (

    select * from {{ ref('stg_meters') }}
    where is_transformer_meter

),

per_transformer as (

    select
        daily.reading_date as supply_date,
        coalesce(supply_meters.feeder_id, 'unknown') as feeder_id,
        coalesce(supply_meters.region, 'unknown') as region,
        daily.reading_count * daily.interval_s as observed_s,
        24 * greatest(0, 1 - daily.supply_off_s / observed_s) as supply_hours

    from daily
    inner join supply_meters on daily.meter_id = supply_meters.meter_id
    where observed_s > 0

),

final as (

    select
        supply_date,
        feeder_id,
        region,
        count() as transformers_reporting,
        avg(supply_hours) as supply_hours,
        24 - supply_hours as load_shedding_hours,
        toFloat64({{ var('promised_supply_hours') }}) as promised_supply_hours,
        toUInt8(supply_hours >= promised_supply_hours) as meets_promise,
        avg(observed_s) / 3600 as observed_hours

    from per_transformer
    group by supply_date, feeder_id, region

)

select * from final
