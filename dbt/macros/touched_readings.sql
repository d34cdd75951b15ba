{#- The leading CTEs of an incremental per-meter aggregate keyed on (meter_id, `grain`): the
    CTE `readings` holds the stg_readings rows of every (meter, grain) that received rows since
    the last run (every row on a full build), so each touched key is recomputed whole. -#}
{% macro touched_readings(grain) %}
{% if is_incremental() %}
    {{ last_run() }},

    touched as (

        select distinct
            stg.meter_id,
            stg.{{ grain }}
        from {{ ref('stg_readings') }} as stg
        where stg.loaded_at > (select last_run.loaded_after from last_run)

    ),
{% endif %}

readings as (

    select * from {{ ref('stg_readings') }}
    {% if is_incremental() %}
        where
            (meter_id, {{ grain }}) in (select
                touched.meter_id,
                touched.{{ grain }}
            from touched)
    {% endif %}

)
{% endmacro %}
