"""The local provider: instances are network namespaces on this host."""
