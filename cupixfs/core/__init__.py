"""What every layer shares: the error hierarchy, bounded retries, secret redaction, and
the layout of the cache directory."""
