"""The CRIU installer ``make setup`` runs (``src/outgrow/data/install-criu.sh``), read from
the package so the aws provider can write it onto instances with cloud-init."""

from importlib import resources

INSTALL_CRIU_SH = resources.files("outgrow.data").joinpath("install-criu.sh").read_text()
