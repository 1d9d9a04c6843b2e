"""cloudmap-reactor: keep Cloud Map (and so ECS Service Connect) in step with ECS task health.

Layout (handler -> core -> adapters):

* ``handlers``  thin Lambda entry points: parse input, call the core, emit metrics.
* ``core``      the decisions (which task leaves, dry run); plain Python, no AWS, no Lambda.
* ``adapters``  one small class per AWS API family (ECS reads, Cloud Map writes).
* ``config``    environment variables parsed once into a typed ``Settings``.
* ``observability``  the one Logger, Tracer and Metrics of the application.
"""

__version__ = "0.3.0"  # also the package version (pyproject.toml) and the probes' User-Agent
