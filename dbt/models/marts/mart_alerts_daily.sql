-- Edge alerts per UTC day, kind, gateway and place: revenue protection's "what fired where".

with

alerts as (

    select * from {{ ref('stg_alerts') }}

),

meters as (

    select * from {{ ref('stg_meters') }}

),

final as (

    select
        alerts.reading_date as alert_date,
        alerts.alert_kind as alert_kind,
        alerts.gateway_id as gateway_id,
        coalesce(meters.region, 'unknown') as region,
        coalesce(meters.feeder_id, 'unknown') as feeder_id,
        coalesce(meters.transformer_id, 'unknown') as transformer_id,
        count() as alert_count,
        uniqExact(alerts.meter_id) as meter_count

    from alerts
    left join meters on alerts.meter_id = meters.meter_id
    group by alert_date, alert_kind, gateway_id, region, feeder_id, transformer_id

)

select * from final
