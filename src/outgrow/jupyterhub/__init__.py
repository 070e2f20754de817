"""JupyterHub on outgrow: ``c.JupyterHub.spawner_class = "outgrow"`` (the entry point of
``OutgrowSpawner`` in the ``jupyterhub.spawners`` group) makes every user's server an
outgrow job. Install ``outgrow[hub]`` next to JupyterHub; see docs/jupyterhub.md.

This package is a client of the control plane's SDK (``outgrow.client``) only."""

from outgrow.jupyterhub.spawner import OutgrowSpawner

__all__ = ["OutgrowSpawner"]
