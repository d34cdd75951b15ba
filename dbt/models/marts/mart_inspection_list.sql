-- Customer meters ranked for a field visit over the most recent days of data, combining the
-- meter's own anomaly score, the unexplained loss of its transformer and its tamper events,
-- with the reasons spelled out for the inspector.

with

meters as (

    select
        meter_id,
        load_shape

    from {{ ref('stg_meters') }}

),

recent as (

    select
        max(reading_date) - {{ var('inspection_window_days') - 1 }} as window_start,
        max(reading_date) as window_end

    from {{ ref('mart_anomaly_flags') }}

),

meter_signals as (

    select
        meter_id,
        any(transformer_id) as transformer_id,
        any(feeder_id) as feeder_id,
        any(customer_class) as customer_class,
        avg(anomaly_score) as meter_anomaly_score,
        countIf(is_consumption_drop) as consumption_drop_days,
        countIf(is_low_vs_peers) as low_vs_peers_days,
        sum(tamper_event_count) as tamper_event_count,
        sum(edge_anomaly_count) as edge_anomaly_count,
        countIf(is_register_rollback) as register_rollback_days,
        avg(drop_severity) as avg_drop_severity,
        count() as days_observed

    from {{ ref('mart_anomaly_flags') }}
    where reading_date >= (select recent.window_start from recent)
    group by meter_id

),

transformer_losses as (

    select
        asset_id as transformer_id,
        avg(unexplained_loss_pct) as transformer_unexplained_loss_pct,
        countIf(is_loss_anomalous) as transformer_loss_days

    from {{ ref('mart_energy_balance') }}
    where
        asset_level = 'transformer'
        and is_complete
        and balance_date >= (select recent.window_start from recent)
    group by asset_id

),

scored as (

    select
        m.meter_id as meter_id,
        m.transformer_id as transformer_id,
        m.feeder_id as feeder_id,
        m.customer_class as customer_class,
        coalesce(r.load_shape, '{{ var("default_load_shape") }}') as load_shape,
        m.days_observed as days_observed,
        m.meter_anomaly_score as meter_anomaly_score,
        m.consumption_drop_days as consumption_drop_days,
        m.low_vs_peers_days as low_vs_peers_days,
        m.tamper_event_count as tamper_event_count,
        m.edge_anomaly_count as edge_anomaly_count,
        t.transformer_unexplained_loss_pct as transformer_unexplained_loss_pct,
        t.transformer_loss_days as transformer_loss_days,
        greatest(
            0,
            least(
                1,
                coalesce(t.transformer_unexplained_loss_pct, 0)
                / (2 * {{ var('unexplained_loss_alert_pct') }})
            )
        ) as transformer_component,
        least(1, m.tamper_event_count / 3) as tamper_component,
        {{ var('inspection_weight_meter') }} * m.meter_anomaly_score
        + {{ var('inspection_weight_transformer') }} * transformer_component
        + {{ var('inspection_weight_tamper') }} * tamper_component as inspection_score,
        arrayRemove(
            [
                if(
                    t.transformer_loss_days > 0,
                    format(
                        'transformer {} loses {}% unexplained ({} of {} days)',
                        coalesce(m.transformer_id, '?'),
                        toString(round(t.transformer_unexplained_loss_pct, 1)),
                        toString(t.transformer_loss_days),
                        toString(m.days_observed)
                    ),
                    ''
                ),
                if(
                    m.consumption_drop_days > 0,
                    format(
                        'consumption dropped {}% on {} days',
                        toString(round(100 * m.avg_drop_severity)),
                        toString(m.consumption_drop_days)
                    ),
                    ''
                ),
                if(
                    m.low_vs_peers_days > 0,
                    format('far below its peers on {} days', toString(m.low_vs_peers_days)),
                    ''
                ),
                if(
                    m.tamper_event_count > 0,
                    format('{} tamper events', toString(m.tamper_event_count)),
                    ''
                ),
                if(
                    m.edge_anomaly_count > 0,
                    format('{} edge model alerts', toString(m.edge_anomaly_count)),
                    ''
                ),
                if(m.register_rollback_days > 0, 'register rollback', '')
            ],
            ''
        ) as reasons

    from meter_signals as m
    left join transformer_losses as t on m.transformer_id = t.transformer_id
    left join meters as r on m.meter_id = r.meter_id

),

ranked as (

    select
        row_number() over (order by inspection_score desc, meter_id asc) as inspection_rank,
        *

    from scored

)

select * from ranked
