"""An OpenAI-compatible HTTP gateway with hard per-key spend ceilings (the ``gateway`` extra).

See :mod:`trilemma.gateway.app` for what it does per request and
:mod:`trilemma.gateway.config` for its file.
"""
