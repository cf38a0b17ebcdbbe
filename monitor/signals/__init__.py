"""Signals: pure, documented statistics over numpy arrays, vectorised over clients.

No I/O and no web or database imports here (DESIGN.md, "Layout"). One module
per family: :mod:`drift`, :mod:`changepoint`, :mod:`divergence`,
:mod:`fairness`, :mod:`participation`, :mod:`health`, :mod:`privacy`.
"""
