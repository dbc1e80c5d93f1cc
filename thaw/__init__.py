"""Thaw: serverless LLM inference on Knative.

This package owns what every other package shares and the wiring on top: the one module that reads
the real clock (:mod:`kernel.clock`), the root of the error hierarchy (:mod:`kernel.errors`) and the
``thaw`` command line (:mod:`thaw.cli`), which only wires the packages together.
"""

__version__ = "0.1.0"
