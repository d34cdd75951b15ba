{{
    config(
        materialized='incremental',
        incremental_strategy='delete+insert',
        unique_key='meter_id, reading_date',
        engine='MergeTree()',
        order_by='(meter_id, reading_date)',
        partition_by='toYYYYMM(reading_date)',
    )
}}

with

-- Every (meter, day) that received rows since the last run is recomputed whole.
{{ touched_readings('reading_date') }},

daily as (

    -- Aggregates get names of their own: a ClickHouse alias is visible in the whole select,
    -- so `sum(energy_kwh) as energy_kwh` would turn `max(energy_kwh)` into a nested aggregate.
    select
        meter_id,
        reading_date,
        sum(energy_kwh) as total_kwh,
        max(energy_kwh) as max_interval_kwh,
        count() as reading_count,
        min(interval_s) as min_interval_s,
        countIf(not is_supply_on) as supply_off_count,
        sumIf(interval_s, not is_supply_on) as supply_off_s,
        countIf(has_tamper_flag) as tamper_flag_count,
        groupUniqArrayArray(flags) as flags_seen,
        max(anomaly_score) as max_anomaly_score,
        min(register_kwh) as min_register_kwh,
        max(register_kwh) as max_register_kwh,
        avg(voltage_v) as avg_voltage_v,
        avg(temperature_c) as avg_temperature_c,
        avg(humidity_pct) as avg_humidity_pct,
        avg(wind_ms) as avg_wind_ms,
        max(loaded_at) as max_loaded_at

    from readings
    group by meter_id, reading_date

),

renamed as (

    select
        meter_id,
        reading_date,
        total_kwh as energy_kwh,
        max_interval_kwh,
        reading_count,
        min_interval_s as interval_s,
        supply_off_count,
        supply_off_s,
        tamper_flag_count,
        flags_seen,
        max_anomaly_score,
        min_register_kwh,
        max_register_kwh,
        avg_voltage_v,
        avg_temperature_c,
        avg_humidity_pct,
        avg_wind_ms,
        max_loaded_at

    from daily

)

select * from renamed
