"""Local stand-ins for the services Outbox talks to, for development and tests
(``outbox dev-sinks``): a Twilio-compatible Messages API (:mod:`outbox.devsinks.twilio_api`)."""
