-- One row per customer meter and UTC day, with what revenue protection charts of it: energy,
-- its own baseline, tamper events, alerts and the drop against the baseline. Unknown places
-- are named; a meter without a baseline yet has 0.

with

flags as (

    select * from {{ ref('mart_anomaly_flags') }}

),

final as (

    select
        reading_date,
        meter_id,
        coalesce(transformer_id, 'unknown') as transformer_id,
        coalesce(feeder_id, 'unknown') as feeder_id,
        coalesce(customer_class, 'unknown') as customer_class,
        energy_kwh,
        if(isNaN(baseline_kwh), 0, baseline_kwh) as baseline_kwh,
        tamper_event_count,
        alert_count,
        is_consumption_drop,
        drop_severity,
        anomaly_score

    from flags

)

select * from final
