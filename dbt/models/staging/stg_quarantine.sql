with

source as (

    select * from {{ source('raw', 'quarantine') }} final

),

renamed as (

    select
        quarantine_id,
        reason,
        -- the reason's kind: its text before the first colon (details follow it)
        trim(splitByChar(':', reason)[1]) as reason_kind,
        source as quarantine_source,
        gateway_id,
        batch_id,
        received_at,
        toDate(received_at) as received_date,
        stored_at

    from source

)

select * from renamed
