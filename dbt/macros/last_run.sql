{#- The CTE `last_run` of an incremental model: `loaded_after`, the newest `max_loaded_at` it
    holds minus the look-back (`incremental_lookback_s`). Only inside `is_incremental()`. -#}
{% macro last_run() %}
    last_run as (

        select
            max(max_loaded_at)
            - toIntervalSecond({{ var('incremental_lookback_s') }}) as loaded_after
        from {{ this }}

    )
{% endmacro %}
