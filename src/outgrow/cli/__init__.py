"""The ``outgrow`` command line (click): the group in ``main``; the host commands in
``local``; the control plane's commands in ``admin`` (up, login, token, image, template)
and ``jobs`` (submit, ls, show, log, migrate, modify, suspend, resume, cancel, restart);
snapshots (``snapshot``, ``snapshots``, ``restore``) in ``snapshots``;
OCI images (``image import|pull|build``) in ``oci``.

Importing the package registers every command on ``main.cli``."""

from outgrow.cli import admin, jobs, local, main, oci, snapshots

__all__ = ["admin", "jobs", "local", "main", "oci", "snapshots"]
