"""Observability and operations: metrics, access log, tracing, health and the admin API.

Kept import-free: ``gateway.config`` reads the sections module, and prometheus_client must
not be imported before ``quartgate serve`` has chosen its multiprocess directory.
"""
