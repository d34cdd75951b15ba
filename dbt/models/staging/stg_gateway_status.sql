with

source as (

    select * from {{ source('raw', 'gateway_status') }} final

),

renamed as (

    select
        gateway_id,
        sent_at,
        received_at,
        state,
        cast(state = 'online', 'Bool') as is_online,
        JSONExtractString(status, 'agent_version') as agent_version,
        JSONExtractInt(status, 'buffer', 'pending_readings') as pending_readings,
        JSONExtractInt(status, 'buffer', 'inflight_batches') as inflight_batches,
        JSONExtractBool(status, 'buffer', 'full') as is_buffer_full,
        parseDateTime64BestEffortOrNull(
            JSONExtractString(status, 'buffer', 'oldest_pending_ts'), 3, 'UTC'
        ) as oldest_pending_at,
        parseDateTime64BestEffortOrNull(
            JSONExtractString(status, 'last_ack_at'), 3, 'UTC'
        ) as last_ack_at,
        nullIf(JSONExtractString(status, 'model', 'name'), '') as model_name,
        nullIf(JSONExtractString(status, 'model', 'version'), '') as model_version,
        nullIf(JSONExtractString(status, 'model_error'), '') as model_error

    from source

)

select * from renamed
