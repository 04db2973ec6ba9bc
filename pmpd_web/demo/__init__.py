"""The demo: users, a synthetic phantom cohort, its images and a small trained model.

It sits above every app (it drives the table import, the image ingest and the engine), so no
app depends on it.
"""
