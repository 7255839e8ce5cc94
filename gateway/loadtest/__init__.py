"""``quartgate loadtest``: Locust driven by a config's route table (docs/loadtest.md)."""
