"""Where identities come from: files (--objects, container credentials) and the Kubernetes API."""
