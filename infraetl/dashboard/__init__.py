"""The live dashboard: server-side SVG charts, Jinja2 rendering, and the HTTP server (SSE, JSON, metrics)."""

from __future__ import annotations

from infraetl.dashboard.render import render_page, render_sections, write_site
from infraetl.dashboard.server import DashboardServer

__all__ = ["DashboardServer", "render_page", "render_sections", "write_site"]
