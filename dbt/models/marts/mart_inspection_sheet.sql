-- The inspection list as field teams read it: one row per ranked meter, its reasons in one
-- sentence, scores rounded, unknown places named.

with

inspection as (

    select * from {{ ref('mart_inspection_list') }}

),

final as (

    select
        inspection_rank,
        meter_id,
        coalesce(transformer_id, 'unknown') as transformer_id,
        coalesce(feeder_id, 'unknown') as feeder_id,
        coalesce(customer_class, 'unknown') as customer_class,
        load_shape,
        round(inspection_score, 3) as inspection_score,
        consumption_drop_days,
        tamper_event_count,
        edge_anomaly_count,
        round(coalesce(transformer_unexplained_loss_pct, 0), 1)
            as transformer_unexplained_loss_pct,
        arrayStringConcat(arrayFilter(r -> r is not null, reasons), '; ') as reasons

    from inspection

)

select * from final
