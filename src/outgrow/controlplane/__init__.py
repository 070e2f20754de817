"""The control plane's logic: job lifecycle, scheduling, policies, reconciliation."""
