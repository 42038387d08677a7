"""The HTTP shell: HTTPS webhook, plain-HTTP metrics, TLS reloading, graceful shutdown."""
