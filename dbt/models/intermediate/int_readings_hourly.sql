{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='meter_id, reading_hour',
        engine='MergeTree()',
        order_by='(meter_id, reading_hour)',
        partition_by='toYYYYMM(reading_hour)',
    )
}}

with

-- Every (meter, hour) that received rows since the last run is recomputed whole.
{{ touched_readings('reading_hour') }},

hourly as (

    select
        meter_id,
        reading_hour,
        sum(energy_kwh) as energy_kwh,
        count() as reading_count,
        countIf(not is_supply_on) as supply_off_count,
        sumIf(interval_s, not is_supply_on) as supply_off_s,
        avg(voltage_v) as avg_voltage_v,
        min(voltage_v) as min_voltage_v,
        avg(temperature_c) as avg_temperature_c,
        countIf(has_tamper_flag) as tamper_flag_count,
        max(anomaly_score) as max_anomaly_score,
        max(loaded_at) as max_loaded_at

    from readings
    group by meter_id, reading_hour

)

select * from hourly
