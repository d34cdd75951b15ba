-- Per customer meter and day: the rules that fired, a 0..1 anomaly score and the reasons in
-- words. Signals: a drop against the meter's own recent baseline, consumption far below its
-- peers (same class and load shape, same day; the class alone when too few meters share both:
-- an intermittent meter is low against its whole class by nature), tamper flags, edge model
-- alerts, register rollbacks, no energy while the grid was on.

with

daily as (

    select
        d.meter_id as meter_id,
        d.reading_date as reading_date,
        d.energy_kwh as energy_kwh,
        d.reading_count as reading_count,
        d.supply_off_count as supply_off_count,
        d.tamper_flag_count as tamper_flag_count,
        d.flags_seen as flags_seen,
        d.max_anomaly_score as max_reading_score,
        m.customer_class as customer_class,
        coalesce(m.load_shape, '{{ var("default_load_shape") }}') as load_shape,
        m.transformer_id as transformer_id,
        m.feeder_id as feeder_id

    from {{ ref('int_readings_daily') }} as d
    left join {{ ref('stg_meters') }} as m on d.meter_id = m.meter_id
    where not m.is_transformer_meter

),

baselines as (

    select
        *,
        avg(energy_kwh) over (
            partition by meter_id order by reading_date
            rows between {{ var('baseline_days') }} preceding and 1 preceding
        ) as baseline_kwh,
        count() over (
            partition by meter_id order by reading_date
            rows between {{ var('baseline_days') }} preceding and 1 preceding
        ) as baseline_day_count

    from daily

),

class_peers as (

    select
        reading_date,
        customer_class,
        median(energy_kwh) as class_median_kwh

    from daily
    group by reading_date, customer_class

),

shape_peers as (

    select
        reading_date,
        customer_class,
        load_shape,
        median(energy_kwh) as shape_median_kwh,
        count() as shape_meter_count

    from daily
    group by reading_date, customer_class, load_shape

),

alerts as (

    select
        meter_id,
        reading_date,
        count() as alert_count,
        countIf(alert_kind = 'anomaly') as edge_anomaly_count,
        countIf(alert_kind = 'tamper') as tamper_alert_count,
        countIf(alert_kind = 'register_rollback') as rollback_alert_count,
        max(anomaly_score) as max_alert_score

    from {{ ref('stg_alerts') }}
    group by meter_id, reading_date

),

joined as (

    select
        b.meter_id as meter_id,
        b.reading_date as reading_date,
        b.customer_class as customer_class,
        b.load_shape as load_shape,
        b.transformer_id as transformer_id,
        b.feeder_id as feeder_id,
        b.energy_kwh as energy_kwh,
        b.baseline_kwh as baseline_kwh,
        sp.shape_meter_count >= {{ var('peer_min_meters') }} as is_peer_group_by_shape,
        if(is_peer_group_by_shape, sp.shape_median_kwh, cp.class_median_kwh)
            as peer_median_kwh,
        b.tamper_flag_count + a.tamper_alert_count as tamper_event_count,
        a.edge_anomaly_count as edge_anomaly_count,
        a.alert_count as alert_count,
        greatest(coalesce(b.max_reading_score, 0), coalesce(a.max_alert_score, 0))
            as max_edge_score,
        b.baseline_day_count >= 3 and b.baseline_kwh > 0
        and b.energy_kwh < b.baseline_kwh * {{ var('consumption_drop_ratio') }}
            as is_consumption_drop,
        peer_median_kwh > 0
        and b.energy_kwh < peer_median_kwh * {{ var('peer_low_ratio') }}
            as is_low_vs_peers,
        b.energy_kwh = 0 and b.supply_off_count < b.reading_count as is_zero_with_supply,
        tamper_event_count > 0 as is_tamper,
        a.rollback_alert_count > 0 or has(b.flags_seen, 'clock_reset') as is_register_rollback,
        a.edge_anomaly_count > 0 as is_edge_anomaly,
        if(
            b.baseline_kwh > 0, greatest(0, least(1, 1 - b.energy_kwh / b.baseline_kwh)), 0
        ) as drop_severity,
        if(
            peer_median_kwh > 0,
            greatest(0, least(1, 1 - b.energy_kwh / peer_median_kwh)),
            0
        ) as peer_severity

    from baselines as b
    left join class_peers as cp
        on b.reading_date = cp.reading_date and b.customer_class = cp.customer_class
    left join shape_peers as sp
        on
            b.reading_date = sp.reading_date
            and b.customer_class = sp.customer_class
            and b.load_shape = sp.load_shape
    left join alerts as a on b.meter_id = a.meter_id and b.reading_date = a.reading_date

),

scored as (

    select
        *,
        least(
            1,
            0.40 * is_consumption_drop * drop_severity
            + 0.25 * is_low_vs_peers * peer_severity
            + 0.30 * is_tamper
            + 0.25 * is_edge_anomaly
            + 0.25 * is_register_rollback
            + 0.20 * is_zero_with_supply
        ) as anomaly_score,
        arrayRemove(
            [
                if(
                    is_consumption_drop,
                    format(
                        'consumption {}% below its {}-day baseline',
                        toString(round(100 * drop_severity)),
                        toString({{ var('baseline_days') }})
                    ),
                    ''
                ),
                if(
                    is_low_vs_peers,
                    format(
                        'consumption {}% below the median of its {}',
                        toString(round(100 * peer_severity)),
                        if(
                            is_peer_group_by_shape,
                            concat('class and load shape (', load_shape, ')'),
                            'class'
                        )
                    ),
                    ''
                ),
                if(is_tamper, format('{} tamper events', toString(tamper_event_count)), ''),
                if(
                    is_edge_anomaly,
                    format('{} edge model alerts', toString(edge_anomaly_count)),
                    ''
                ),
                if(is_register_rollback, 'register rollback', ''),
                if(is_zero_with_supply, 'no consumption while supplied', '')
            ],
            ''
        ) as reasons

    from joined

),

final as (

    select
        *,
        length(reasons) > 0 as is_anomalous

    from scored

)

select * from final
