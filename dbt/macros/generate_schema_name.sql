{#- Models land in the database named by their folder (staging, intermediate, marts), the same
    on every target, so dashboards and checks name tables the same way everywhere. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
