"""The dashboard's helpers: cached accessors to kdcore, plotly chart builders, shared page parts.

Imported by app.py and pages/ only; kdcore never imports this package.
"""
