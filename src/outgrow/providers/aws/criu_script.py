"""The CRIU installer ``make setup`` runs (``src/outgrow/data/install-criu.sh``) and the
patches it applies (``src/outgrow/data/criu-patches/``), read from the package so the aws
provider can write them onto instances with cloud-init."""

from importlib import resources

_DATA = resources.files("outgrow.data")
INSTALL_CRIU_SH = _DATA.joinpath("install-criu.sh").read_text()
# (file name, content), in the order the installer applies them
CRIU_PATCHES: tuple[tuple[str, str], ...] = tuple(
    sorted(
        (f.name, f.read_text())
        for f in _DATA.joinpath("criu-patches").iterdir()
        if f.name.endswith(".patch")
    )
)
