"""Tests that drive the Dagster UI in headless Chromium."""
