-- Supply reliability per feeder and month, IEEE 1366:
--   SAIFI = customer interruptions / customers served
--   SAIDI = customer minutes interrupted / customers served
--   CAIDI = SAIDI / SAIFI (minutes per interruption)
-- Interruptions are sustained ones (longer than 5 min) seen by customer meters, counted in the
-- month they started; customers served are the feeder's registered customer meters.

with

customers as (

    select
        assumeNotNull(feeder_id) as feeder_id,
        count() as customers_served

    from {{ ref('stg_meters') }}
    where not is_transformer_meter and feeder_id is not null
    group by feeder_id

),

feeder_months as (

    select distinct
        assumeNotNull(meters.feeder_id) as feeder_id,
        toStartOfMonth(daily.reading_date) as month_start

    from {{ ref('int_readings_daily') }} as daily
    inner join {{ ref('stg_meters') }} as meters on daily.meter_id = meters.meter_id
    where meters.feeder_id is not null

),

interruptions as (

    select
        assumeNotNull(feeder_id) as feeder_id,
        toStartOfMonth(toDate(interruption_start_at)) as month_start,
        count() as customer_interruptions,
        uniqExact(meter_id) as customers_interrupted,
        sum(duration_s) / 60 as customer_minutes_interrupted

    from {{ ref('int_supply_interruptions') }}
    where meter_role = 'customer' and is_sustained and feeder_id is not null
    group by feeder_id, month_start

),

final as (

    select
        fm.feeder_id as feeder_id,
        fm.month_start as month_start,
        c.customers_served as customers_served,
        coalesce(i.customer_interruptions, 0) as customer_interruptions,
        coalesce(i.customers_interrupted, 0) as customers_interrupted,
        coalesce(i.customer_minutes_interrupted, 0) as customer_minutes_interrupted,
        customer_interruptions / c.customers_served as saifi,
        customer_minutes_interrupted / c.customers_served as saidi_min,
        if(saifi > 0, saidi_min / saifi, null) as caidi_min

    from feeder_months as fm
    inner join customers as c on fm.feeder_id = c.feeder_id
    left join interruptions as i
        on fm.feeder_id = i.feeder_id and fm.month_start = i.month_start

)

select * from final
