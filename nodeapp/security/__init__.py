"""API tokens: scopes, the token store in the ``tokens`` bucket, verification, the per-process
token cache that follows revocations, and the per-token rate limit.

A layer between ``broker`` and ``orders`` (ADR 0009): it needs the broker, and nothing about
orders; the api's middleware and the CLI's ``token`` commands build on it.
"""
