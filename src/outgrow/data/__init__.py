"""Files shipped with the package: ``install-criu.sh`` is run by ``make setup`` on this
host and written onto cloud instances by the aws provider's cloud-init (one copy)."""
