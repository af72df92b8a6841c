"""The worker: message bus, job models, pipeline, channels."""
