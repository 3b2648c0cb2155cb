"""ecg-rnn: find abnormal heartbeats in ECG recordings with recurrent autoencoders."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ecg-rnn")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
