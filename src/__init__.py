"""archsmith: the engine behind the four model-architecture roles (imported as `archsmith`)."""

__version__ = "0.1.0"
