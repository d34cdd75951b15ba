with

source as (

    select * from {{ source('raw', 'meters') }} final

),

renamed as (

    select
        meter_id,
        meter_role,
        cast(meter_role = 'transformer', 'Bool') as is_transformer_meter,
        customer_class,
        load_shape,
        tariff,
        transformer_id,
        feeder_id,
        region,
        timezone,
        latitude,
        longitude,
        gateway_id,
        installed_at,
        updated_at

    from source

)

select * from renamed
