"""Moving bytes between places that are not a local disk: object storage (S3) for
checkpoints, job directories and the migration fallback. Used by the agent (which uploads
and downloads) and by the aws provider (which hands out the URLs)."""
