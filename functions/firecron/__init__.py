"""firecron: serverless cron dispatcher for Google Cloud."""
