"""Find my stack (``python -m backend tune``): the fastest stack of methods whose paired quality stays inside a
tolerance, searched over the registry's space and confirmed on fresh seeds (:mod:`backend.tune.search`)."""
