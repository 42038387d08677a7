"""Drop-in Python replacement for the Amazon EKS Pod Identity Webhook."""

__version__ = "0.1.0"
