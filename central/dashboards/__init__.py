"""Control-room dashboards on Apache Superset, kept as code (``dashboards/`` at the top of the
repository, Superset's own import format) and served over the warehouse marts
(docs/dashboards.md)."""
