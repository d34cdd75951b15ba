-- Quarantined input per UTC day of arrival, gateway and kind of reason, beside everything
-- the gateway delivered that day (stored readings + quarantined rows). Dense: every kind seen
-- has a row for every gateway-day, so sum(quarantined_rows) / sum(received_rows) grouped by
-- kind, over any set of gateways, is the exact rate of that kind.

with

quarantine as (

    select * from {{ ref('stg_quarantine') }}

),

readings as (

    select * from {{ ref('stg_readings') }}

),

quarantined as (

    select
        received_date,
        coalesce(gateway_id, 'unknown') as gateway_id,
        reason_kind,
        count() as delivered_rows

    from quarantine
    group by received_date, gateway_id, reason_kind

),

stored as (

    select
        toDate(received_at) as received_date,
        gateway_id,
        count() as delivered_rows

    from readings
    group by received_date, gateway_id

),

deliveries as (

    select
        received_date,
        gateway_id,
        delivered_rows

    from stored

    union all

    select
        received_date,
        gateway_id,
        delivered_rows

    from quarantined

),

gateway_days as (

    select
        received_date,
        gateway_id,
        sum(delivered_rows) as received_rows

    from deliveries
    group by received_date, gateway_id

),

reasons as (

    select distinct reason_kind from quarantined

),

final as (

    select
        gateway_days.received_date as received_date,
        gateway_days.gateway_id as gateway_id,
        reasons.reason_kind as reason_kind,
        coalesce(quarantined.delivered_rows, 0) as quarantined_rows,
        gateway_days.received_rows as received_rows

    from gateway_days
    cross join reasons
    left join quarantined
        on
            gateway_days.received_date = quarantined.received_date
            and gateway_days.gateway_id = quarantined.gateway_id
            and reasons.reason_kind = quarantined.reason_kind

)

select * from final
