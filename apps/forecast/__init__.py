"""Forecasting app: attention models for stock and weather series (tfattn)."""
