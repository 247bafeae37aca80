"""Metering: applies usage events exactly once and reports GPU time per account."""
