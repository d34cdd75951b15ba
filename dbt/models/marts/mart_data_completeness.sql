-- Expected vs received intervals per meter and day, for every registered meter (and every
-- meter that reported), over the days the warehouse holds data for. A meter that sent nothing
-- on a day has a row with zero received intervals.

with

daily as (

    select * from {{ ref('int_readings_daily') }}

),

bounds as (

    select
        min(reading_date) as first_date,
        max(reading_date) as last_date,
        max(reading_at) as data_end_at

    from {{ ref('stg_readings') }}

),

days as (

    select
        arrayJoin(
            arrayMap(
                i -> first_date + i,
                range(toUInt32(dateDiff('day', first_date, last_date) + 1))
            )
        ) as reading_date,
        data_end_at

    from bounds
    where first_date is not null and first_date > '1970-01-01'

),

reporting_meters as (

    select
        meter_id,
        min(interval_s) as usual_interval_s,
        min(reading_date) as first_reading_date

    from daily
    group by meter_id

),

meters as (

    -- Outer joins fill a missing side with default values ('' and 0), not nulls.
    select
        if(registry.meter_id != '', registry.meter_id, reporting.meter_id) as meter_id,
        nullIf(registry.meter_role, '') as meter_role,
        registry.gateway_id as gateway_id,
        if(
            reporting.usual_interval_s > 0,
            reporting.usual_interval_s,
            {{ var('default_interval_s') }}
        ) as usual_interval_s,
        -- Nothing is expected before a meter was installed or, if that is unknown, before it
        -- first reported; a registered meter that never reported owed every day.
        coalesce(
            toDate(registry.installed_at),
            nullIf(reporting.first_reading_date, toDate('1970-01-01')),
            toDate('1970-01-01')
        ) as expected_from

    from {{ ref('stg_meters') }} as registry
    full outer join reporting_meters as reporting on registry.meter_id = reporting.meter_id

),

meter_days as (

    select
        meters.meter_id as meter_id,
        days.reading_date as reading_date,
        meters.meter_role as meter_role,
        meters.gateway_id as gateway_id,
        meters.usual_interval_s as usual_interval_s,
        -- The last day counts only up to the newest reading the warehouse holds.
        dateDiff(
            'second',
            toDateTime64(days.reading_date, 3, 'UTC'),
            least(toDateTime64(days.reading_date, 3, 'UTC') + toIntervalDay(1), days.data_end_at)
        ) as expected_s

    from meters
    cross join days
    where days.reading_date >= meters.expected_from

),

final as (

    select
        md.meter_id as meter_id,
        md.reading_date as reading_date,
        md.meter_role as meter_role,
        md.gateway_id as gateway_id,
        toUInt32(
            intDiv(md.expected_s, if(d.interval_s > 0, d.interval_s, md.usual_interval_s))
        ) as expected_intervals,
        toUInt32(d.reading_count) as received_intervals,
        toUInt32(greatest(0, toInt64(expected_intervals) - received_intervals))
            as missing_intervals,
        if(
            expected_intervals > 0, least(1, received_intervals / expected_intervals), 1
        ) as completeness_ratio

    from meter_days as md
    left join daily as d
        on md.meter_id = d.meter_id and md.reading_date = d.reading_date

)

select * from final
