"""`breaker node-agent`: on each node, cut the open connections of quarantined pods."""
