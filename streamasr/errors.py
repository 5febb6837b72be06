"""The error hierarchy: everything the package raises on purpose derives from StreamAsrError."""


class StreamAsrError(Exception):
    """Base class for errors raised by streamasr."""


class InputError(StreamAsrError, ValueError):
    """Bad input from a user or client, which the caller can fix (CLI exit code 2)."""


class AudioFormatError(InputError):
    """Audio that does not match its declared format: odd byte count, bad rate or channels."""


class AudioFileError(InputError):
    """An audio file that is missing, unreadable, corrupt or of an unsupported format."""


class ModelError(StreamAsrError):
    """A model that cannot be found or loaded."""


class ModelNotFoundError(ModelError, InputError):
    """The weights are not on this machine; the message says how to get them."""


class ModelFormatError(ModelError):
    """A model file exists but is malformed or of an unsupported kind."""
