"""INT8 that passes: per-layer sensitivity (which quantized layers cost the accuracy) and the
rescue loop (re-export with the most sensitive layers kept in float until a candidate agrees
with the source). Backend-specific measurement lives on the backend plugin
(``layer_sensitivity``); this package holds what every backend shares.

``sensitivity`` imports numpy only: the backends (which the device runner imports) use it.
``rescue`` is the compress-time loop (progress and status lines). Nothing is imported here, so
importing a backend never pulls in the terminal UI.
"""
