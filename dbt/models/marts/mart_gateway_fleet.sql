-- One row per gateway, as the fleet-health dashboard shows it: mart_gateway_health with its
-- unknowns named, online as a number (a metric can sum it) and the backlog's age in hours.

with

health as (

    select * from {{ ref('mart_gateway_health') }}

),

final as (

    select
        gateway_id,
        coalesce(gateway_state, 'unknown') as gateway_state,
        toUInt8(is_online) as is_online,
        last_seen_at,
        backlog_readings,
        inflight_batches,
        oldest_pending_at,
        coalesce(backlog_age_s, 0) / 3600 as backlog_age_h,
        is_buffer_full,
        coalesce(agent_version, 'unknown') as agent_version,
        coalesce(model_version, 'none') as model_version,
        coalesce(model_error, '') as model_error,
        registered_meter_count,
        reading_count

    from health

)

select * from final
