with

source as (

    select * from {{ source('raw', 'readings') }} final

),

renamed as (

    select
        meter_id,
        ts as reading_at,
        -- The interval a reading measures ends at `reading_at`: it belongs to the hour and the
        -- day in which it started.
        toStartOfHour(ts - toIntervalSecond(1)) as reading_hour,
        toDate(ts - toIntervalSecond(1)) as reading_date,
        interval_s,
        kwh as energy_kwh,
        register_kwh,
        voltage_v,
        current_a,
        power_factor,
        temperature_c,
        humidity_pct,
        wind_ms,
        cast(supply = 'on', 'Bool') as is_supply_on,
        flags,
        cast(hasAny(flags, {{ var('tamper_flags') }}), 'Bool') as has_tamper_flag,
        score as anomaly_score,
        model_version,
        gateway_id,
        batch_id,
        received_at,
        loaded_at

    from source

)

select * from renamed
