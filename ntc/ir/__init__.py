"""The IR: op models, value types, the builder tree and the DAG."""
