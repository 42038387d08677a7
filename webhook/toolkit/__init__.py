"""Operator tools beyond upstream: OIDC issuer kit, token doctor, trust policies, audit."""
