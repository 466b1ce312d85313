"""The inference tests share the tiny model of the root conftest (``tiny_weights``,
``tiny_loaded``)."""
