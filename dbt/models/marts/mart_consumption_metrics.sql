{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='meter_id, reading_date',
        engine='MergeTree()',
        order_by='(reading_date, meter_id)',
        partition_by='toYYYYMM(reading_date)',
    )
}}

-- Consumption per meter and day, with the attributes analysts slice by (customer class, tariff,
-- region, feeder, transformer) and the shape of the day (peak hour, evening peak share).

with

{% if is_incremental() %}
    {{ last_run() }},
{% endif %}

daily as (

    select * from {{ ref('int_readings_daily') }}
    {% if is_incremental() %}
        where max_loaded_at > (select last_run.loaded_after from last_run)
    {% endif %}

),

touched_days as (

    select
        meter_id,
        reading_date
    from daily

),

hours as (

    select hourly_readings.*
    from {{ ref('int_readings_hourly') }} as hourly_readings
    where
        (hourly_readings.meter_id, toDate(hourly_readings.reading_hour))
        in (select
            touched_days.meter_id,
            touched_days.reading_date
        from touched_days)

),

hourly as (

    select
        meter_id,
        toDate(reading_hour) as reading_date,
        max(energy_kwh) as peak_hour_kwh,
        toHour(argMax(reading_hour, energy_kwh)) as peak_hour_utc,
        sumIf(energy_kwh, toHour(reading_hour) >= 17 and toHour(reading_hour) < 22)
            as evening_kwh

    from hours
    group by meter_id, reading_date

),

meters as (

    select * from {{ ref('stg_meters') }}

),

final as (

    select
        daily.reading_date as reading_date,
        daily.meter_id as meter_id,
        if(meters.meter_id = '', 'unregistered', meters.meter_role) as meter_role,
        meters.customer_class as customer_class,
        meters.tariff as tariff,
        meters.region as region,
        meters.feeder_id as feeder_id,
        meters.transformer_id as transformer_id,
        daily.energy_kwh as energy_kwh,
        hourly.peak_hour_kwh as peak_hour_kwh,
        hourly.peak_hour_utc as peak_hour_utc,
        if(daily.energy_kwh > 0, hourly.evening_kwh / daily.energy_kwh, 0)
            as evening_peak_share,
        daily.reading_count as reading_count,
        daily.supply_off_s / 3600 as supply_off_hours,
        daily.avg_temperature_c as avg_temperature_c,
        daily.avg_humidity_pct as avg_humidity_pct,
        daily.max_loaded_at as max_loaded_at

    from daily
    left join hourly
        on daily.meter_id = hourly.meter_id and daily.reading_date = hourly.reading_date
    left join meters on daily.meter_id = meters.meter_id

)

select * from final
