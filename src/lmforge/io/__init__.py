"""Storage (local, HTTP, S3), MLflow tracking and lineage."""
