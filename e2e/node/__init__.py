"""A real single-node Kubernetes cluster in its own network namespace (see cluster.py)."""
