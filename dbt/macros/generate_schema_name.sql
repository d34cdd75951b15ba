{#- Models land in the database named by their folder (staging, intermediate, marts), the same
    on every target, so dashboards and checks name tables the same way everywhere. The
    orchestrated refresh builds the marts into another database (var `marts_schema`, e.g.
    marts_build), checks them, and only then publishes them to `marts`
    (central/warehouse/publish.py): readers never see marts that failed the gate. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- elif custom_schema_name | trim == 'marts' -%}
        {{ var('marts_schema', 'marts') }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
