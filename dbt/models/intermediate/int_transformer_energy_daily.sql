-- Per transformer and day: energy into the transformer (its supply meter) and energy billed
-- to the customer meters under it, with how complete each side's data is.

with

daily as (

    select * from {{ ref('int_readings_daily') }}

),

meters as (

    select * from {{ ref('stg_meters') }}
    where transformer_id is not null

),

meters_per_transformer as (

    select
        transformer_id,
        countIf(not is_transformer_meter) as customer_meter_count,
        countIf(is_transformer_meter) as supply_meter_count,
        any(feeder_id) as feeder_id,
        any(region) as region

    from meters
    group by transformer_id

),

readings_per_transformer as (

    select
        daily.reading_date as reading_date,
        meters.transformer_id as transformer_id,
        sumIf(daily.energy_kwh, meters.is_transformer_meter) as supplied_kwh,
        sumIf(daily.energy_kwh, not meters.is_transformer_meter) as billed_kwh,
        sumIf(daily.reading_count, meters.is_transformer_meter) as supply_reading_count,
        sumIf(
            intDiv(86400, daily.interval_s), meters.is_transformer_meter
        ) as supply_expected_count,
        countIf(not meters.is_transformer_meter) as customer_meters_reporting,
        sumIf(daily.reading_count, not meters.is_transformer_meter) as customer_reading_count,
        sumIf(
            intDiv(86400, daily.interval_s), not meters.is_transformer_meter
        ) as customer_expected_count_reporting

    from daily
    inner join meters on daily.meter_id = meters.meter_id
    group by daily.reading_date, meters.transformer_id

),

final as (

    select
        r.reading_date as reading_date,
        r.transformer_id as transformer_id,
        m.feeder_id as feeder_id,
        m.region as region,
        r.supplied_kwh as supplied_kwh,
        r.billed_kwh as billed_kwh,
        m.customer_meter_count as customer_meter_count,
        r.customer_meters_reporting as customer_meters_reporting,
        r.supply_reading_count as supply_reading_count,
        r.customer_reading_count as customer_reading_count,
        -- Meters that sent nothing that day still owed a full day of intervals.
        if(
            r.supply_expected_count > 0,
            least(1, r.supply_reading_count / r.supply_expected_count),
            0
        ) as supply_completeness,
        if(
            m.customer_meter_count > 0,
            least(
                1,
                r.customer_reading_count / (
                    r.customer_expected_count_reporting
                    + (m.customer_meter_count - r.customer_meters_reporting)
                    * intDiv(86400, {{ var('default_interval_s') }})
                )
            ),
            0
        ) as customer_completeness

    from readings_per_transformer as r
    inner join meters_per_transformer as m on r.transformer_id = m.transformer_id

)

select * from final
