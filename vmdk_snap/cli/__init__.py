"""The ``vmdk-snap`` command line: a thin adapter over :mod:`vmdk_snap.driver`."""
