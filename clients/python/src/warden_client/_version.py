"""The package's version, from its installed metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("warden-client")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0.0.0+unknown"
