with

source as (

    select * from {{ source('raw', 'alerts') }} final

),

renamed as (

    select
        alert_id,
        gateway_id,
        meter_id,
        ts as reading_at,
        toDate(ts - toIntervalSecond(1)) as reading_date,
        kind as alert_kind,
        score as anomaly_score,
        threshold as anomaly_threshold,
        model_version,
        features as features_json,
        detail,
        received_at

    from source

)

select * from renamed
