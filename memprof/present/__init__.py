"""View models and plotly figures built from analysis results; no dash (the dashboard and
the HTML report both render these).
"""
