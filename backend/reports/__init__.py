"""Plots (plotly) and report export (HTML / CSV / JSON / zip) of runs in the results store."""
