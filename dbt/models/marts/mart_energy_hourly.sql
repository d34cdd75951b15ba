-- Energy supplied (transformer supply meters) and billed (customer meters) per UTC hour,
-- region, feeder and customer class: the grid overview's hourly and daily curves and its
-- evening peak. Supply rows carry the class `(supply)` so that both sides share one grain.

with

hourly as (

    select * from {{ ref('int_readings_hourly') }}

),

meters as (

    select * from {{ ref('stg_meters') }}

),

classified as (

    select
        hourly.reading_hour as reading_hour,
        hourly.energy_kwh as energy_kwh,
        hourly.supply_off_s as supply_off_s,
        meters.is_transformer_meter as is_supply,
        coalesce(meters.region, 'unknown') as region,
        coalesce(meters.feeder_id, 'unknown') as feeder_id,
        multiIf(
            meters.is_transformer_meter, '(supply)',
            meters.meter_id = '', 'unregistered',
            coalesce(meters.customer_class, 'unknown')
        ) as customer_class

    from hourly
    left join meters on hourly.meter_id = meters.meter_id

),

final as (

    select
        reading_hour,
        toDate(reading_hour) as reading_date,
        toHour(reading_hour) as hour_of_day,
        region,
        feeder_id,
        customer_class,
        sumIf(energy_kwh, is_supply) as supplied_kwh,
        sumIf(energy_kwh, not is_supply) as billed_kwh,
        countIf(not is_supply) as customer_meters_reporting,
        countIf(is_supply) as supply_meters_reporting,
        sum(supply_off_s) / 3600 as supply_off_meter_hours

    from classified
    group by reading_hour, region, feeder_id, customer_class

)

select * from final
