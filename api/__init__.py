"""HTTP service for CSMS, DSO, operator and data-scientist users (FastAPI)."""
