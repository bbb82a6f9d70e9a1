"""Iris trainer: scikit-learn model, MLflow logging, registration, promotion and export.

Importing the package is cheap: MLflow and matplotlib are only imported by trainer.cli.
"""
