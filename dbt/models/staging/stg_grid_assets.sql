with

source as (

    select * from {{ source('raw', 'grid_assets') }} final

),

renamed as (

    select
        asset_id,
        asset_type,
        parent_id,
        name as asset_name,
        rated_kva,
        latitude,
        longitude,
        updated_at

    from source

)

select * from renamed
