"""Typed errors. Each carries one line that says what is wrong and what to do about it."""


class EcgRnnError(Exception):
    """Base class: the CLI prints str(error) on one line and exits non-zero."""


class RecordError(EcgRnnError, ValueError):
    """A recording (WFDB or CSV) is missing, malformed, hostile or unusable."""


class SignalError(EcgRnnError, ValueError):
    """A signal cannot be processed (flat, too short, no beats found)."""


class CheckpointError(EcgRnnError, ValueError):
    """A model file is missing, foreign, tampered or incompatible."""


class DataNotFoundError(EcgRnnError, FileNotFoundError):
    """A data set could not be found locally nor downloaded."""
