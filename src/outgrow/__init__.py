"""outgrow: when your notebook outgrows its machine, outgrow moves it, live, to a bigger one."""

__version__ = "0.1.0"
