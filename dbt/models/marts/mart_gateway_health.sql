-- One row per gateway: when it was last heard of, its buffer backlog, its model.

with

latest_status as (

    -- the newest by central's clock: a gateway's own clock may be a year off (no RTC)
    select * from {{ ref('stg_gateway_status') }}
    order by received_at desc, sent_at desc
    limit 1 by gateway_id

),

reading_arrivals as (

    select
        gateway_id,
        max(received_at) as last_reading_received_at,
        max(reading_at) as last_reading_at,
        count() as reading_count

    from {{ ref('stg_readings') }}
    group by gateway_id

),

registered as (

    select
        assumeNotNull(gateway_id) as gateway_id,
        count() as registered_meter_count

    from {{ ref('stg_meters') }}
    where gateway_id is not null
    group by gateway_id

),

gateways as (

    select gateway_id from latest_status
    union distinct
    select gateway_id from reading_arrivals
    union distinct
    select gateway_id from registered

),

final as (

    select
        g.gateway_id as gateway_id,
        nullIf(s.state, '') as gateway_state,
        s.is_online as is_online,
        if(s.gateway_id != '', s.received_at, null) as last_status_at,
        if(r.gateway_id != '', r.last_reading_received_at, null) as last_reading_received_at,
        if(r.gateway_id != '', r.last_reading_at, null) as last_reading_at,
        greatest(
            coalesce(last_status_at, toDateTime64(0, 3, 'UTC')),
            coalesce(last_reading_received_at, toDateTime64(0, 3, 'UTC'))
        ) as last_seen_at,
        s.pending_readings as backlog_readings,
        s.inflight_batches as inflight_batches,
        s.oldest_pending_at as oldest_pending_at,
        if(
            s.oldest_pending_at is not null, dateDiff('second', s.oldest_pending_at, s.sent_at), 0
        ) as backlog_age_s,
        s.is_buffer_full as is_buffer_full,
        nullIf(s.agent_version, '') as agent_version,
        s.model_name as model_name,
        s.model_version as model_version,
        s.model_error as model_error,
        s.last_ack_at as last_ack_at,
        reg.registered_meter_count as registered_meter_count,
        r.reading_count as reading_count

    from gateways as g
    left join latest_status as s on g.gateway_id = s.gateway_id
    left join reading_arrivals as r on g.gateway_id = r.gateway_id
    left join registered as reg on g.gateway_id = reg.gateway_id

)

select * from final
