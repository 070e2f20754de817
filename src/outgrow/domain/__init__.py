"""Pure domain: models, instance-type catalog, state machine, policies. No I/O here
(except parsing a catalog file handed in as text)."""
