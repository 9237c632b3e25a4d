"""Security: encryption at rest (``crypto``) and the hash-chained audit trail (``audit``)."""
